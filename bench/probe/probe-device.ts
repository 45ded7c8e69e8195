// What the subgroup-matrix probes share (bench/probe/subgroup-matrix-f16.ts, tensor-core-matmul.ts):
// a pipeline from WGSL with its compile errors as text, and an f32 buffer read back.
// @ts-nocheck -- probe scripts, bundled like bench/matmul-shapes.ts

/** The compute pipeline of `code` (entry point main), or the compiler's / validation's error. OUT/last.wgsl keeps the code. */
export async function pipelineFor(device: GPUDevice, code: string): Promise<{ pipeline?: GPUComputePipeline; error?: string }> {
  if (process.env.OUT) (await import('node:fs')).writeFileSync(`${process.env.OUT}/last.wgsl`, code);
  const module = device.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  const errors = info.messages.filter((m) => m.type === 'error');
  if (errors.length) return { error: errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('; ') };
  device.pushErrorScope('validation');
  const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const err = await device.popErrorScope();
  return err ? { error: err.message } : { pipeline };
}

/** The first n f32s of buf (waits for the GPU). */
export async function readF32(device: GPUDevice, buf: GPUBuffer, n: number): Promise<Float32Array> {
  const rb = device.createBuffer({ size: n * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, 0, rb, 0, n * 4);
  device.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(rb.getMappedRange().slice(0));
  rb.unmap();
  rb.destroy();
  return out;
}
