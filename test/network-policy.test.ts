// The hosts the Content-Security-Policy lets the app reach, and the worker's check of a hub
// endpoint against the same list (issue #8: no request but the model download from a chosen host).

import { describe, expect, it } from 'vitest';
import { contentSecurityPolicy, MODEL_HOST_SOURCES, modelHostAllowed } from '../src/worker/network-policy';

describe('modelHostAllowed', () => {
  it('allows the hub, its download CDNs, hf-mirror.com and mirrors on this machine', () => {
    for (const url of [
      'https://huggingface.co',
      'https://huggingface.co/HuggingFaceTB/SmolLM2-135M/resolve/main/config.json',
      'https://cdn-lfs.huggingface.co/repos/x',
      'https://cdn-lfs.hf.co/x',
      'https://cas-bridge.xethub.hf.co/xet-bridge-us/x',
      'https://hf-mirror.com',
      'http://127.0.0.1:8080/hub',
      'http://localhost:5173',
      'http://localhost',
    ]) {
      expect(modelHostAllowed(url), url).toBe(true);
    }
  });

  it('refuses every other host, another scheme or port, and look-alikes', () => {
    for (const url of [
      'https://example.com',
      'http://huggingface.co',
      'https://huggingface.co:8443',
      'https://evilhuggingface.co',
      'https://huggingface.co.evil.example',
      'https://hf.co.evil.example',
      'https://hf-mirror.com.evil.example',
      'http://10.0.0.5:8080',
      'ftp://127.0.0.1',
      'not a url',
    ]) {
      expect(modelHostAllowed(url), url).toBe(false);
    }
  });
});

describe('contentSecurityPolicy', () => {
  it('connects only to itself and the model hosts; no inline script or eval in the built app', () => {
    const policy = contentSecurityPolicy();
    const directives = new Map(policy.split('; ').map((d) => [d.split(' ')[0], d.split(' ').slice(1)]));
    expect(directives.get('connect-src')).toEqual(["'self'", ...MODEL_HOST_SOURCES]);
    expect(directives.get('default-src')).toEqual(["'self'"]);
    expect(directives.get('script-src')).toEqual(["'self'"]);
    expect(directives.get('worker-src')).toEqual(["'self'", 'blob:']);
    expect(directives.get('object-src')).toEqual(["'none'"]);
    expect(policy).not.toMatch(/unsafe-(inline|eval)/);
    // The dev server needs its inline preamble and websocket; only there.
    expect(contentSecurityPolicy({ dev: true })).toMatch(/script-src 'self' 'unsafe-inline'.*ws:\/\/127\.0\.0\.1:\*/);
  });
});
