// The two variants of the row-reduction shaders (layernorm, rmsnorm, attention softmax,
// cross-entropy, grad norm): one WGSL file each, with the subgroup code between
//   // #if subgroups
//   ...            (kept in the subgroup variant only)
//   // #else
//   ...            (kept in the plain variant only)
//   // #endif
// lines. The subgroup variant gets shaders/subgroup_reduce.wgsl (`enable subgroups;` and the
// run-time layout check) in front, and is only compiled where the device has the feature. The two
// texts differ, so the pipeline cache (keyed on the code) keeps them apart.
import prelude from '../../../shaders/subgroup_reduce.wgsl?raw';
import type { Gpu } from '../gpu/gpu';

export type ReductionVariant = 'subgroups' | 'workgroup';

/** 'subgroups' where the device has the feature and tuning.subgroups is on; 'workgroup' (memory and barriers only) otherwise. */
export function reductionVariant(gpu: Gpu): ReductionVariant {
  return gpu.hasSubgroups && gpu.tuning.subgroups ? 'subgroups' : 'workgroup';
}

/**
 * Tests only: the subgroup variant then takes its workgroup-memory path in every workgroup (as it
 * does on its own where a device lays subgroups out differently; shaders/subgroup_reduce.wgsl).
 */
export const subgroupTesting = { forceFallback: false };

const DIRECTIVE = /^\s*\/\/\s*#(if subgroups|else|endif)\s*$/;

/** The text of one variant (without the prelude). Throws on unbalanced directives. */
export function specializeShader(code: string, subgroups: boolean): string {
  const out: string[] = [];
  let section: 'none' | 'if' | 'else' = 'none';
  const lines = code.split('\n');
  lines.forEach((line, i) => {
    const m = DIRECTIVE.exec(line);
    if (m) {
      const d = m[1];
      if (d === 'if subgroups' && section === 'none') section = 'if';
      else if (d === 'else' && section === 'if') section = 'else';
      else if (d === 'endif' && section !== 'none') section = 'none';
      else throw new Error(`shader line ${i + 1}: unexpected "// #${d}"`);
      return;
    }
    if (section === 'none' || (section === 'if') === subgroups) out.push(line);
  });
  if (section !== 'none') throw new Error('shader: "// #if subgroups" without "// #endif"');
  return out.join('\n');
}

const cache = new Map<string, { subgroups: string; workgroup: string }>();

/** The shader text for the variant reductionVariant(gpu) picks. */
export function reductionShader(gpu: Gpu, code: string): { code: string; variant: ReductionVariant; constants: Record<string, number> } {
  let c = cache.get(code);
  if (!c) {
    c = { subgroups: prelude + specializeShader(code, true), workgroup: specializeShader(code, false) };
    cache.set(code, c);
  }
  const variant = reductionVariant(gpu);
  const constants: Record<string, number> = variant === 'subgroups' && subgroupTesting.forceFallback ? { SG_FORCE_FALLBACK: 1 } : {};
  return { code: c[variant], variant, constants };
}
