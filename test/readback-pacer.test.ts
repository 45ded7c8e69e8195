// train/submit-step.ts ReadbackPacer: where the JS side polls for GPU events (Node's Dawn), a step's
// readback is asked for late, the delay steered so that the answer comes soon after asking. A fake
// staging buffer stands in for the GPU: its mapAsync answers once "the step is done", a fixed time
// after submit (or at once).
import { describe, expect, it } from 'vitest';
import { InOrderReports, ReadbackPacer } from '../src/engine/train/submit-step';

// WebGPU's globals come with a device (node-gpu.ts); this test needs only the map mode
(globalThis as { GPUMapMode?: unknown }).GPUMapMode ??= { READ: 1, WRITE: 2 };

/** A staging buffer whose mapAsync resolves `doneAfterMs` after `submitted` (at once if that has passed). */
function fakeStaging(submitted: number, doneAfterMs: number): { buffer: GPUBuffer; asked: () => number } {
  let askedAt = NaN;
  const buffer = {
    mapAsync: () => {
      askedAt = performance.now();
      const wait = Math.max(0, submitted + doneAfterMs - askedAt);
      // done already: answered at the binding's next poll (here: at once)
      return wait > 0 ? new Promise<void>((resolve) => setTimeout(resolve, wait)) : Promise.resolve();
    },
  } as unknown as GPUBuffer;
  return { buffer, asked: () => askedAt - submitted };
}

/** Runs `steps` readbacks one after another; returns how long after submit each was asked for and answered. */
async function run(pacer: ReadbackPacer, steps: number, doneAfterMs: number): Promise<{ asked: number[]; answered: number[] }> {
  const asked: number[] = [], answered: number[] = [];
  for (let i = 0; i < steps; i++) {
    const submitted = performance.now();
    const s = fakeStaging(submitted, doneAfterMs);
    await pacer.map(s.buffer);
    asked.push(s.asked());
    answered.push(performance.now() - submitted);
  }
  return { asked, answered };
}

describe('ReadbackPacer', () => {
  it('asks at once where nothing polls (browsers)', async () => {
    const pacer = new ReadbackPacer(false);
    const { asked } = await run(pacer, 5, 20);
    expect(Math.max(...asked)).toBeLessThan(5);
    expect(pacer.delayMs).toBe(0);
  });

  it('learns to ask shortly before a GPU-bound step is done, without answering much later', async () => {
    const pacer = new ReadbackPacer(true);
    const { asked, answered } = await run(pacer, 30, 40);
    // the first readbacks are asked for at once; the last ones late, but the answers stay close to 40 ms
    expect(asked[0]).toBeLessThan(5);
    const late = asked.slice(-10);
    expect(Math.min(...late)).toBeGreaterThan(20);
    expect(Math.max(...answered.slice(-10))).toBeLessThan(60);
    expect(pacer.delayMs).toBeGreaterThan(20);
    expect(pacer.delayMs).toBeLessThan(45);
  });

  it('backs off to asking at once when the steps are done by then (a CPU-bound run)', async () => {
    const pacer = new ReadbackPacer(true);
    await run(pacer, 20, 40); // learns a delay...
    expect(pacer.delayMs).toBeGreaterThan(20);
    const { answered } = await run(pacer, 25, 0); // ...then the steps get fast
    expect(pacer.delayMs).toBeLessThan(2);
    expect(Math.max(...answered.slice(-5))).toBeLessThan(5);
  });
});

describe('InOrderReports', () => {
  it('reports steps in order when their readbacks answer in reverse, and goes on after a failed one', async () => {
    const reports = new InOrderReports();
    const seen: number[] = [];
    const answers = [40, 25, 10, 0].map((ms, i) => new Promise<number>((resolve, reject) => setTimeout(() => (i === 2 ? reject(new Error('step 3 refused')) : resolve(i + 1)), ms)));
    const done = answers.map((res) => reports.next(res, (step) => seen.push(step)).catch((e: Error) => seen.push(-1) && e));
    await Promise.all(done);
    // step 4 answered first, step 1 last: reported 1, 2, (3 failed), 4
    expect(seen).toEqual([1, 2, -1, 4]);
  });
});
