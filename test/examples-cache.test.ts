// The worker's cache of tokenized examples: shared builds, previews replacing previews, and a
// run's build that a preview arriving meanwhile (the page's debounced prepare right after
// "Resume") must not stop.
import { describe, expect, it } from 'vitest';
import { ExamplesCache, Superseded, type ExamplesBuild } from '../src/worker/examples-cache';

/** A build in `blocks` progress points, each released by hand; records what ran. */
function controlledBuild(name: string, log: string[], blocks = 3) {
  const gates: Array<() => void> = [];
  let waiting: (() => void) | null = null;
  const build: ExamplesBuild<string> = async (onProgress) => {
    log.push(`${name} start`);
    for (let i = 0; i < blocks; i++) {
      await new Promise<void>((resolve) => {
        gates.push(resolve);
        waiting?.();
      });
      onProgress((i + 1) / blocks);
    }
    log.push(`${name} end`);
    return name;
  };
  /** Releases the next block once the build waits on it. */
  const step = async () => {
    while (gates.length === 0) await new Promise<void>((r) => (waiting = r));
    gates.shift()!();
    await new Promise((r) => setTimeout(r, 0));
  };
  return { build, step };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

describe('the examples cache', () => {
  it('shares a running build for the same key and keeps its result', async () => {
    const cache = new ExamplesCache<string>();
    const log: string[] = [];
    const a = controlledBuild('a', log);
    const other = controlledBuild('other', log);
    const first = cache.get('k', false, a.build, () => {});
    const second = cache.get('k', false, other.build, () => {});
    for (let i = 0; i < 3; i++) await a.step();
    expect(await first).toBe('a');
    expect(await second).toBe('a');
    expect(await cache.get('k', true, other.build, () => {})).toBe('a');
    expect(log).toEqual(['a start', 'a end']);
  });

  it('a preview for another key stops a running preview build at its next progress point', async () => {
    const cache = new ExamplesCache<string>();
    const log: string[] = [];
    const a = controlledBuild('a', log);
    const b = controlledBuild('b', log, 1);
    const progress: number[] = [];
    const first = cache.get('k1', false, a.build, (f) => progress.push(f));
    const firstStopped = expect(first).rejects.toBeInstanceOf(Superseded);
    await a.step();
    const second = cache.get('k2', false, b.build, () => {});
    await a.step();
    await firstStopped;
    await b.step();
    expect(await second).toBe('b');
    expect(progress).toEqual([1 / 3]);
    expect(log).toEqual(['a start', 'b start', 'b end']);
  });

  it("a preview arriving during a run's build waits for it, then builds its own; the run's build ends", async () => {
    const cache = new ExamplesCache<string>();
    const log: string[] = [];
    const run = controlledBuild('run', log);
    const preview = controlledBuild('preview', log, 1);
    const forRun = cache.get('run key', true, run.build, () => {});
    await run.step();
    const forPreview = cache.get('preview key', false, preview.build, () => {});
    await settle();
    expect(log).toEqual(['run start']); // the preview waits
    await run.step();
    await run.step();
    expect(await forRun).toBe('run');
    await settle();
    expect(log).toEqual(['run start', 'run end', 'preview start']);
    await preview.step();
    expect(await forPreview).toBe('preview');
    // a preview for the run's own key during its build shares it
    const run2 = controlledBuild('run2', log, 2);
    const again = cache.get('run key 2', true, run2.build, () => {});
    const same = cache.get('run key 2', false, preview.build, () => {});
    await run2.step();
    await run2.step();
    expect(await again).toBe('run2');
    expect(await same).toBe('run2');
    // a run that joins a preview's running build makes it a run's build: a later preview waits
    const shared = controlledBuild('shared', log, 2);
    const late = controlledBuild('late', log, 1);
    const first = cache.get('shared key', false, shared.build, () => {});
    await shared.step();
    const joined = cache.get('shared key', true, late.build, () => {});
    const later = cache.get('other key', false, late.build, () => {});
    await shared.step();
    expect(await first).toBe('shared');
    expect(await joined).toBe('shared');
    await late.step();
    expect(await later).toBe('late');
  });

  it("a run's build replaces a running preview's; clear() stops any build; a failed build is not kept", async () => {
    const cache = new ExamplesCache<string>();
    const log: string[] = [];
    const preview = controlledBuild('preview', log);
    const run = controlledBuild('run', log);
    const p = cache.get('preview key', false, preview.build, () => {});
    const previewStopped = expect(p).rejects.toBeInstanceOf(Superseded);
    await preview.step();
    const r = cache.get('run key', true, run.build, () => {});
    const runStopped = expect(r).rejects.toBeInstanceOf(Superseded);
    await preview.step();
    await previewStopped;
    await run.step();
    cache.clear(); // new data or a new model
    await run.step();
    await runStopped;

    let calls = 0;
    const failing: ExamplesBuild<string> = async () => {
      calls++;
      throw new Error('bad row');
    };
    await expect(cache.get('k', false, failing, () => {})).rejects.toThrow('bad row');
    await expect(cache.get('k', false, failing, () => {})).rejects.toThrow('bad row');
    expect(calls).toBe(2);
  });
});
