/**
 * The tokenized examples of the loaded data: they depend only on the data, the model (its
 * tokenizer), the column mapping and the max length, so they are kept across setting changes.
 *
 * A build is shared while it runs: a request for the same key waits for it. A request for a newer
 * key stops a running preview build at its next progress point (the page asked for something
 * else), but never a run's build: a preview arriving while a run is being set up (the page's
 * debounced prepare right after "Resume") waits for the run's build to end, then builds its own.
 * A run that joins a preview's running build (same key) makes it a run's build.
 * New data or a new model clear the cache, which stops any running build.
 */

/** A build of examples that a newer one replaced. */
export class Superseded extends Error {
  constructor() {
    super('The data, model, column mapping or max length changed while the examples were being built.');
    this.name = 'Superseded';
  }
}

/** What builds the examples: calls onProgress now and then, which throws Superseded once the build is replaced. */
export type ExamplesBuild<T> = (onProgress: (fraction: number) => void) => Promise<T>;

interface Entry<T> {
  key: string;
  forRun: boolean;
  built: Promise<T> | null;
  settled: boolean;
}

export class ExamplesCache<T> {
  private entry: Entry<T> | null = null;

  /** Drops the kept examples; a running build stops at its next progress point. */
  clear(): void {
    this.entry = null;
  }

  /**
   * The examples for `key`: kept, shared with a build running for the same key, or built now.
   * `forRun`: a run is being set up on them (its build is not stopped by a preview's).
   */
  async get(key: string, forRun: boolean, build: ExamplesBuild<T>, report: (fraction: number) => void): Promise<T> {
    for (;;) {
      const e = this.entry;
      if (e && e.key === key && e.built) {
        if (forRun) e.forRun = true; // a run shares a preview's build: no preview may stop it now
        return e.built;
      }
      if (forRun || !e || !e.forRun || e.settled || !e.built) break;
      await e.built.catch(() => undefined); // a run's build: let it end, then look again
    }
    // In the cache before the build starts: its first rows run before `build` returns.
    const entry: Entry<T> = { key, forRun, built: null, settled: false };
    this.entry = entry;
    const onProgress = (fraction: number) => {
      if (this.entry !== entry) throw new Superseded();
      report(fraction);
    };
    const built = build(onProgress);
    entry.built = built;
    built.then(
      () => {
        entry.settled = true;
      },
      () => {
        entry.settled = true;
        if (this.entry === entry) this.entry = null;
      },
    );
    return built;
  }
}
