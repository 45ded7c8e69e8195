// Kernels that read an operand stored as f16 (gpu/tensor.ts DType 'f16': IEEE halves packed two
// to a 32-bit word) with the WGSL they have for f32. The binding's declaration becomes one of
// words (array<u32> for scalar reads, array<vec2<u32>> for vec4 ones: 4 halves, the same index),
// and each read `x[i]` a call that widens what it loads with unpack2x16float, which is core WGSL:
// no shader-f16 needed, so it runs on every WebGPU device (SwiftShader included) and only halves
// the memory and the bytes read. Sums stay f32, as do the values once loaded.

const cache = new Map<string, string>();

/**
 * `code` with its read-only storage binding `name` (array<f32> or array<vec4<f32>>) read from
 * packed halves. Throws where the binding is not declared so, or is used other than by index.
 */
export function withPackedF16(code: string, name: string): string {
  const key = `${name}\u0000${code}`;
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  const decl = new RegExp(String.raw`(var<storage,\s*read>\s+${name}\s*:\s*)array<(f32|vec4<f32>)>;`);
  const found = decl.exec(code);
  if (!found) throw new Error(`packed f16: no read-only array<f32> or array<vec4<f32>> binding named ${name}`);
  const vec4 = found[2] === 'vec4<f32>';
  const at = `${name}_f16_at`;
  const helper = vec4
    ? `\nfn ${at}(i: u32) -> vec4<f32> {\n  let w = ${name}[i];\n  return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));\n}\n`
    : `\nfn ${at}(i: u32) -> f32 {\n  let pair = unpack2x16float(${name}[i >> 1u]);\n  return select(pair.x, pair.y, (i & 1u) == 1u);\n}\n`;
  // every read x[expr] -> at(expr), expr matched to its closing bracket (and rewritten too)
  const rewrite = (text: string): string => {
    let out = '';
    let from = 0;
    const read = new RegExp(String.raw`\b${name}\s*\[`, 'g');
    for (let m = read.exec(text); m; m = read.exec(text)) {
      if (m.index > 0 && /[\w.]/.test(text[m.index - 1])) continue; // another name's suffix, or a field
      let depth = 1, j = m.index + m[0].length;
      for (; j < text.length && depth > 0; j++) {
        if (text[j] === '[') depth++;
        else if (text[j] === ']') depth--;
      }
      if (depth !== 0) throw new Error(`packed f16: unbalanced brackets after ${name}[`);
      out += text.slice(from, m.index) + `${at}(${rewrite(text.slice(m.index + m[0].length, j - 1))})`;
      from = j;
      read.lastIndex = j;
    }
    return out + text.slice(from);
  };
  const marker = '\u0000declaration\u0000'; // where the declaration goes back, the text around it rewritten
  const out = rewrite(code.slice(0, found.index) + marker + code.slice(found.index + found[0].length));
  // any other use (arrayLength(&x), a write, passing it whole) would see words, not values
  const uncommented = out.replace(/\/\/[^\n]*/g, (c) => ' '.repeat(c.length)); // comments aside
  const other = new RegExp(String.raw`(^|[^\w.])${name}\b(?!_f16_at)`).exec(uncommented);
  if (other) throw new Error(`packed f16: ${name} is used other than by index: "${out.slice(other.index, other.index + 40).trim()}"`);
  const wordType = vec4 ? 'array<vec2<u32>>' : 'array<u32>';
  const result = out.replace(marker, `${found[1]}${wordType};${helper}`);
  cache.set(key, result);
  return result;
}

/** The f32 block of scripts/gen-matmul-wide.mjs (B_STORED_F32) that withStagedHalfB replaces. */
const B_STORED_F32 = `alias BStored = vec4<f32>;
fn widenB(stored: BStored) -> vec4<f32> { return stored; }
`;
const B_STORED_HALVES = `alias BStored = vec2<u32>; // 4 halves, two to a word
fn widenB(stored: BStored) -> vec4<f32> { return vec4<f32>(unpack2x16float(stored.x), unpack2x16float(stored.y)); }
`;

/** Whether `code` holds B as BStored (the vec4 and stream-K matmuls), so withStagedHalfB applies. */
export function hasStagedB(code: string): boolean {
  return code.includes(B_STORED_F32);
}

/**
 * A vec4 or stream-K matmul (scripts/gen-matmul-wide.mjs) reading B from packed halves: its
 * BStored becomes a pair of words, so the prefetched registers keep the words across the K loop's
 * products and widen them only as they are staged. (withPackedF16 widens as it loads, inside the
 * prefetch's branch, which makes the products wait for the loads.)
 */
export function withStagedHalfB(code: string): string {
  if (!hasStagedB(code)) throw new Error('packed f16: the kernel declares no BStored block to give halves');
  return code.replace(B_STORED_F32, B_STORED_HALVES);
}
