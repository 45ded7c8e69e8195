import code from '../../../shaders/add.wgsl?raw';
import type { Gpu } from '../gpu/gpu';
import { bindDispatch, type Dispatch } from '../gpu/dispatch';
import type { Tensor } from '../gpu/tensor';
import { grid1d } from './grid';

/** out = a + b, elementwise over all of `out` (out may alias a or b). */
export function add(gpu: Gpu, a: Tensor, b: Tensor, out: Tensor): Dispatch {
  const n = out.size;
  if (a.size !== n || b.size !== n) throw new Error(`add: sizes ${a.size}, ${b.size} -> ${n}`);
  return bindDispatch(gpu, { label: `add(${out.label})`, code, params: [n], buffers: [a, b, out], workgroups: grid1d(n) });
}
