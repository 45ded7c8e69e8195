// The loss as training goes: every step's training loss (faint), its running average (solid) and
// the validation loss (dots), against the step, with labelled axes. Plain SVG sized to its box.

import { useLayoutEffect, useMemo, useRef, useState } from 'react';
import type { EvalPoint, StepPoint } from '../../worker/protocol';

const HEIGHT = 260;
/** Plot margins of the step charts (this one and the classifier's accuracy chart). */
export const MARGIN = { left: 56, right: 18, top: 14, bottom: 40 };

/** Round tick values (1, 2 or 5 × 10^k apart) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function tickLabel(v: number, ticks: number[]): string {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : 1;
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  return v.toFixed(Math.min(digits, 6));
}

/** At most one averaged point per pixel column, so long runs stay cheap to draw. */
function downsample(points: StepPoint[], columns: number): StepPoint[] {
  if (points.length <= columns * 2) return points;
  const per = points.length / columns;
  const out: StepPoint[] = [];
  for (let c = 0; c < columns; c++) {
    const slice = points.slice(Math.floor(c * per), Math.floor((c + 1) * per));
    if (slice.length === 0) continue;
    out.push({ step: slice[slice.length - 1].step, loss: slice.reduce((s, p) => s + p.loss, 0) / slice.length });
  }
  return out;
}

/** Exponential moving average, debiased at the start (as TensorBoard smooths). */
function smooth(points: StepPoint[], weight: number): StepPoint[] {
  let avg = 0;
  return points.map((p, i) => {
    avg = weight * avg + (1 - weight) * p.loss;
    return { step: p.step, loss: avg / (1 - weight ** (i + 1)) };
  });
}

export function LossChart(props: { points: StepPoint[]; evals: EvalPoint[]; totalSteps: number }) {
  const box = useRef<HTMLDivElement>(null);
  const [width, setWidth] = useState(800);
  useLayoutEffect(() => {
    const el = box.current;
    if (!el) return;
    setWidth(el.clientWidth);
    const ro = new ResizeObserver(([entry]) => setWidth(Math.max(280, entry.contentRect.width)));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);

  const finite = useMemo(() => props.points.filter((p) => Number.isFinite(p.loss)), [props.points]);
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const drawn = useMemo(() => downsample(finite, Math.max(50, Math.floor(plotW))), [finite, plotW]);
  // A few points read fine as they are; a long noisy run needs a running average to show the trend.
  const smoothed = useMemo(() => (finite.length >= 20 ? smooth(drawn, 0.6) : []), [drawn, finite.length]);

  const lastStep = Math.max(props.totalSteps, finite.at(-1)?.step ?? 0, props.evals.at(-1)?.step ?? 0, 1);
  const values = [...drawn.map((p) => p.loss), ...props.evals.map((e) => e.evalLoss).filter(Number.isFinite)];
  let lo = values.length ? Math.min(...values) : 0;
  let hi = values.length ? Math.max(...values) : 1;
  if (hi - lo < 1e-6) {
    lo -= 0.5;
    hi += 0.5;
  }
  const pad = (hi - lo) * 0.08;
  lo = Math.max(0, lo - pad);
  hi += pad;
  const yTicks = niceTicks(lo, hi, 5);
  const xTicks = niceTicks(0, lastStep, Math.max(2, Math.min(8, Math.floor(plotW / 90)))).filter((t) => Number.isInteger(t));
  const x = (step: number) => MARGIN.left + (step / lastStep) * plotW;
  const y = (loss: number) => MARGIN.top + (1 - (loss - lo) / (hi - lo)) * plotH;
  const path = (pts: StepPoint[]) => pts.map((p, i) => `${i ? 'L' : 'M'}${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join('');
  const evalPath = props.evals.map((e, i) => `${i ? 'L' : 'M'}${x(e.step).toFixed(1)},${y(e.evalLoss).toFixed(1)}`).join('');

  return (
    <div className="chart" ref={box} data-testid="loss-chart" data-points={finite.length} data-evals={props.evals.length}>
      <div className="chart-legend" aria-hidden="true">
        <span className="legend-item">
          <span className="swatch swatch-train" /> training loss{smoothed.length ? ' (line: running average)' : ''}
        </span>
        <span className="legend-item">
          <span className="swatch swatch-eval" /> validation loss
        </span>
      </div>
      <svg width={width} height={HEIGHT} role="img" aria-label={`Loss over ${finite.length} steps`}>
        <StepAxes width={width} height={HEIGHT} x={x} y={y} xTicks={xTicks} yTicks={yTicks} yLabel={(t) => tickLabel(t, yTicks)} />
        <text className="axis-title" transform={`translate(14 ${MARGIN.top + plotH / 2}) rotate(-90)`} textAnchor="middle">
          loss
        </text>
        {drawn.length > 0 && <path className={smoothed.length ? 'line-train-raw' : 'line-train'} d={path(drawn)} />}
        {smoothed.length > 0 && <path className="line-train" d={path(smoothed)} />}
        {drawn.length === 1 && <circle className="dot-train" cx={x(drawn[0].step)} cy={y(drawn[0].loss)} r={3} />}
        {props.evals.length > 1 && <path className="line-eval" d={evalPath} />}
        {props.evals.map((e) => (
          <circle key={e.step} className="dot-eval" cx={x(e.step)} cy={y(e.evalLoss)} r={4}>
            <title>
              step {e.step}: validation loss {e.evalLoss.toFixed(4)}
            </title>
          </circle>
        ))}
        {finite.length === 0 && (
          <text className="chart-empty" x={MARGIN.left + plotW / 2} y={MARGIN.top + plotH / 2} textAnchor="middle">
            The loss appears here after the first step.
          </text>
        )}
      </svg>
    </div>
  );
}

/** Grid, ticks and axes of a chart over training steps (x) with its own y scale; "step" under the x axis. */
export function StepAxes(props: {
  width: number;
  height: number;
  x: (step: number) => number;
  y: (v: number) => number;
  xTicks: number[];
  yTicks: number[];
  yLabel: (v: number) => string;
}) {
  const { width, height, x, y } = props;
  const bottom = height - MARGIN.bottom;
  return (
    <>
      {props.yTicks.map((t) => (
        <g key={`y${t}`}>
          <line className="grid" x1={MARGIN.left} x2={width - MARGIN.right} y1={y(t)} y2={y(t)} />
          <text className="tick" x={MARGIN.left - 8} y={y(t)} textAnchor="end" dominantBaseline="middle">
            {props.yLabel(t)}
          </text>
        </g>
      ))}
      {props.xTicks.map((t) => (
        <g key={`x${t}`}>
          <line className="axis" x1={x(t)} x2={x(t)} y1={bottom} y2={bottom + 5} />
          <text className="tick" x={x(t)} y={bottom + 18} textAnchor="middle">
            {t}
          </text>
        </g>
      ))}
      <line className="axis" x1={MARGIN.left} x2={width - MARGIN.right} y1={bottom} y2={bottom} />
      <line className="axis" x1={MARGIN.left} x2={MARGIN.left} y1={MARGIN.top} y2={bottom} />
      <text className="axis-title" x={(MARGIN.left + width - MARGIN.right) / 2} y={height - 4} textAnchor="middle">
        step
      </text>
    </>
  );
}
