// Where the app may connect: its own origin, and the model hosts it downloads from. One list
// feeds both the Content-Security-Policy that the browser enforces (vite.config.ts writes it into
// index.html) and the worker's own check of a hub endpoint before it downloads, so that a host the
// policy would block gets a message that says why instead of a bare "Failed to fetch".
//
// A CSP in a <meta> tag is fixed when the page loads, so the hosts a user may pick are fixed too:
// the Hugging Face hub (and the CDNs its downloads redirect to), the best-known public mirror, and
// mirrors on this machine (any port of 127.0.0.1 / localhost). Another mirror means deploying the
// app with that host added here (docs/reliability.md says why the list is closed).

/** CSP sources (scheme://host[:port], `*.` for any subdomain, `:*` for any port) models may come from. */
export const MODEL_HOST_SOURCES: readonly string[] = [
  'https://huggingface.co',
  // resolve/ URLs redirect to the CDNs: cdn-lfs.huggingface.co, cdn-lfs.hf.co, cas-bridge.xethub.hf.co
  'https://*.huggingface.co',
  'https://*.hf.co',
  'https://hf-mirror.com',
  // a mirror (or the tests' fake hub) on this machine
  'http://127.0.0.1:*',
  'http://localhost:*',
  'https://127.0.0.1:*',
  'https://localhost:*',
];

/** The page's Content-Security-Policy. `dev` adds what Vite's dev server needs (its inline React preamble, CSS as <style>, HMR's websocket). */
export function contentSecurityPolicy(opts: { dev?: boolean } = {}): string {
  const connect = ["'self'", ...MODEL_HOST_SOURCES, ...(opts.dev ? ['ws://127.0.0.1:*', 'ws://localhost:*'] : [])];
  const directives: [string, string[]][] = [
    ['default-src', ["'self'"]],
    ['script-src', ["'self'", ...(opts.dev ? ["'unsafe-inline'"] : [])]],
    // The training worker starts from a blob: URL so that it inherits this policy (a worker loaded
    // from its own URL would get its policy from the response headers: none on a static host).
    ['worker-src', ["'self'", 'blob:']],
    ['connect-src', connect],
    ['img-src', ["'self'", 'data:', 'blob:']],
    ['style-src', ["'self'", ...(opts.dev ? ["'unsafe-inline'"] : [])]],
    ['font-src', ["'self'"]],
    ['object-src', ["'none'"]],
    ['base-uri', ["'self'"]],
    ['form-action', ["'none'"]],
  ];
  return directives.map(([name, sources]) => `${name} ${sources.join(' ')}`).join('; ');
}

interface HostSource {
  scheme: string;
  /** Host, or the part after "*." when anySubdomain. */
  host: string;
  anySubdomain: boolean;
  /** null: the scheme's default port only; '*': any port. */
  port: string | null;
}

function parseSource(source: string): HostSource {
  const m = /^([a-z]+):\/\/(\*\.)?([^/:]+)(?::(\*|\d+))?$/.exec(source);
  if (!m) throw new Error(`not a host source: ${source}`);
  return { scheme: m[1], anySubdomain: m[2] !== undefined, host: m[3], port: m[4] ?? null };
}

/** Whether the CSP lets the app connect to `url` (as connect-src matches a host source). */
export function modelHostAllowed(url: string): boolean {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return false;
  }
  const scheme = u.protocol.replace(/:$/, '');
  const host = u.hostname.toLowerCase();
  return MODEL_HOST_SOURCES.map(parseSource).some((s) => {
    if (s.scheme !== scheme) return false;
    const hostOk = s.anySubdomain ? host.endsWith(`.${s.host}`) : host === s.host;
    const portOk = s.port === '*' || (s.port === null ? u.port === '' : u.port === s.port);
    return hostOk && portOk;
  });
}

/** The hosts a user can pick, as the page lists them. */
export function allowedHostsText(): string {
  return 'huggingface.co (and its download CDNs), hf-mirror.com, or a mirror on this machine (127.0.0.1 or localhost, any port)';
}
