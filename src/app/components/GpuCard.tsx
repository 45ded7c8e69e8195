// What the page is running on: the adapter's name, whether it is a real GPU, and the limits that
// decide how large a model and batch can be.

import { useApp } from '../store';
import { formatBytes } from '../format';

export function GpuCard() {
  const gpu = useApp((s) => s.gpu);
  if (gpu.status === 'checking') {
    return (
      <section className="card gpu-card" data-testid="gpu-card" aria-busy="true">
        <p className="muted">Checking WebGPU…</p>
      </section>
    );
  }
  if (gpu.status !== 'ready') return null;
  const { gpu: info, hasF16, hasSubgroups } = gpu.info;
  const name = info.description || [info.vendor, info.architecture].filter(Boolean).join(' ') || 'Unnamed WebGPU adapter';
  return (
    <section className="card gpu-card" data-testid="gpu-card" aria-label="Graphics device">
      <div className="gpu-main">
        <div>
          <div className="gpu-kicker">{info.isFallbackAdapter ? 'Software renderer · no GPU in use' : 'Graphics adapter'}</div>
          <div className="gpu-name" data-testid="gpu-name">
            {name}
          </div>
          {info.vendor && info.description && <div className="muted small">{[info.vendor, info.architecture].filter(Boolean).join(' · ')}</div>}
        </div>
        <dl className="gpu-facts">
          <div>
            <dt>16-bit floats</dt>
            <dd>{hasF16 ? 'yes' : 'no'}</dd>
          </div>
          <div>
            <dt>Subgroups</dt>
            <dd>{hasSubgroups ? 'yes' : 'no'}</dd>
          </div>
          <div title={info.tensorCoresRefused ?? "f16 subgroup matrices: the frozen layers' products run there, in mixed precision (f16 operands, f32 sums) or with f32 accuracy (More settings -> Precision)"}>
            <dt>Tensor cores</dt>
            <dd data-testid="gpu-tensor-cores">{info.tensorCores ? 'yes' : info.tensorCoresRefused ? 'not used (failed their check)' : 'no'}</dd>
          </div>
          <div>
            <dt>Largest buffer</dt>
            <dd>{formatBytes(info.limits.maxBufferSize)}</dd>
          </div>
          <div>
            <dt>Largest storage binding</dt>
            <dd>{formatBytes(info.limits.maxStorageBufferBindingSize)}</dd>
          </div>
        </dl>
      </div>
      {info.isFallbackAdapter && (
        <p className="warning-box" data-testid="gpu-fallback">
          This is a <strong>software renderer</strong> that runs WebGPU on the CPU, not a graphics card. Training works but is very
          slow: only tiny models are practical. If this computer has a GPU, Chrome is not using it: open <code>chrome://gpu</code> to see
          why (blocklisted driver, hardware acceleration turned off).
        </p>
      )}
    </section>
  );
}

/** Shown instead of the training steps when WebGPU cannot run here. */
export function WebGpuHelp() {
  const gpu = useApp((s) => s.gpu);
  if (gpu.status !== 'unavailable') return null;
  const noApi = gpu.reason === 'no-webgpu';
  return (
    <section className="card help-card" data-testid="webgpu-help" aria-labelledby="webgpu-help-title">
      <h2 id="webgpu-help-title">{noApi ? 'This browser cannot run WebGPU' : 'WebGPU found no usable graphics adapter'}</h2>
      <p className="help-reason">{gpu.message}</p>
      <p>Training runs on your GPU through WebGPU, so nothing can be trained here until it works. What to try:</p>
      <ol className="help-steps">
        {noApi ? (
          <>
            <li>
              Use <strong>Chrome or Edge 113 or newer</strong> on Windows, macOS or ChromeOS (WebGPU is on by default there). Recent
              Safari and Firefox versions have it on some systems too.
            </li>
            <li>
              On <strong>Linux</strong>, WebGPU is still behind a flag: open <code>chrome://flags/#enable-unsafe-webgpu</code>, enable it and
              relaunch, or start Chrome with <code>--enable-unsafe-webgpu --enable-features=Vulkan</code>.
            </li>
            <li>
              The page must come from <code>https://</code> or <code>http://localhost</code>: WebGPU is only offered to secure pages.
            </li>
          </>
        ) : (
          <>
            <li>
              Open <code>chrome://gpu</code> and look at the WebGPU line: a blocklisted driver or disabled hardware acceleration
              (Settings → System) turns it off.
            </li>
            <li>Update the graphics driver, then restart the browser.</li>
            <li>
              On Linux, enable <code>chrome://flags/#enable-unsafe-webgpu</code> and start Chrome with <code>--enable-features=Vulkan</code>.
            </li>
          </>
        )}
      </ol>
      <p className="muted">Adapters you trained before are still below: you can download them without a GPU.</p>
    </section>
  );
}
