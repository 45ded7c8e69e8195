// What a classification run shows beside its loss: accuracy and macro-F1 per evaluation (a chart
// and a table, the kept evaluation marked), and the confusion matrix of the latest or the best
// evaluation with the class names on its rows (true) and columns (predicted).

import { useLayoutEffect, useRef, useState } from 'react';
import type { BestEval, EvalPoint } from '../../worker/protocol';
import { MARGIN, niceTicks, StepAxes } from './LossChart';
import { formatLoss, formatInt } from '../format';

const HEIGHT = 200;

export function formatPercent(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? '–' : `${(100 * v).toFixed(1)} %`;
}

export function formatF1(v: number | undefined): string {
  return v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(3);
}

/** Accuracy and macro-F1 (0..100 %) against the step, one point per evaluation. */
export function MetricsChart(props: { evals: EvalPoint[]; totalSteps: number; best: BestEval | null }) {
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
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const evals = props.evals.filter((e) => Number.isFinite(e.accuracy));
  const lastStep = Math.max(props.totalSteps, evals.at(-1)?.step ?? 0, 1);
  const x = (step: number) => MARGIN.left + (step / lastStep) * plotW;
  const y = (v: number) => MARGIN.top + (1 - v) * plotH;
  const yTicks = [0, 0.25, 0.5, 0.75, 1];
  const xTicks = niceTicks(0, lastStep, Math.max(2, Math.min(8, Math.floor(plotW / 90)))).filter((t) => Number.isInteger(t));
  const series = [
    { key: 'accuracy' as const, cls: 'acc', label: 'accuracy' },
    { key: 'f1' as const, cls: 'f1', label: 'macro-F1' },
  ];
  return (
    <div className="chart metrics-chart" ref={box} data-testid="metrics-chart" data-evals={evals.length}>
      <div className="chart-legend" aria-hidden="true">
        <span className="legend-item">
          <span className="swatch swatch-acc" /> validation accuracy
        </span>
        <span className="legend-item">
          <span className="swatch swatch-f1" /> validation macro-F1
        </span>
        {props.best && (
          <span className="legend-item">
            <span className="swatch swatch-best" /> kept: step {props.best.step} (best {props.best.metric === 'loss' ? 'loss' : 'accuracy'})
          </span>
        )}
      </div>
      <svg width={width} height={HEIGHT} role="img" aria-label={`Accuracy and macro-F1 over ${evals.length} evaluations`}>
        <StepAxes width={width} height={HEIGHT} x={x} y={y} xTicks={xTicks} yTicks={yTicks} yLabel={(t) => `${Math.round(t * 100)} %`} />
        {props.best && <line className="best-line" x1={x(props.best.step)} x2={x(props.best.step)} y1={MARGIN.top} y2={MARGIN.top + plotH} />}
        {series.map((s) => (
          <g key={s.key}>
            {evals.length > 1 && (
              <path className={`line-${s.cls}`} d={evals.map((e, i) => `${i ? 'L' : 'M'}${x(e.step).toFixed(1)},${y(e[s.key]!).toFixed(1)}`).join('')} />
            )}
            {evals.map((e) => (
              <circle key={e.step} className={`dot-${s.cls}`} cx={x(e.step)} cy={y(e[s.key]!)} r={4}>
                <title>
                  step {e.step}: {s.label} {s.key === 'accuracy' ? formatPercent(e.accuracy) : formatF1(e.f1)}
                </title>
              </circle>
            ))}
          </g>
        ))}
        {evals.length === 0 && (
          <text className="chart-empty" x={MARGIN.left + plotW / 2} y={MARGIN.top + plotH / 2} textAnchor="middle">
            Accuracy and macro-F1 appear here after the first evaluation.
          </text>
        )}
      </svg>
    </div>
  );
}

/** Every evaluation's numbers; the kept one is marked. */
export function EvalTable({ evals, best }: { evals: EvalPoint[]; best: BestEval | null }) {
  if (evals.length === 0) return <p className="muted small">No evaluation yet.</p>;
  return (
    <div className="table-scroll eval-table-box">
      <table className="eval-table" data-testid="eval-table">
        <thead>
          <tr>
            <th scope="col" className="num">
              step
            </th>
            <th scope="col" className="num">
              validation loss
            </th>
            <th scope="col" className="num">
              accuracy
            </th>
            <th scope="col" className="num">
              macro-F1
            </th>
            <th scope="col">
              <span className="visually-hidden">kept</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {evals.map((e) => {
            const kept = best?.step === e.step;
            return (
              <tr key={e.step} className={kept ? 'kept' : undefined} data-testid="eval-row" data-step={e.step}>
                <td className="num">{formatInt(e.step)}</td>
                <td className="num">{formatLoss(e.evalLoss)}</td>
                <td className="num">{formatPercent(e.accuracy)}</td>
                <td className="num">{formatF1(e.f1)}</td>
                <td>{kept && <span className="tag tag-ok">best</span>}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

/** Rows: true label; columns: predicted; with each class's recall and precision. */
export function ConfusionMatrix({ labels, evals, best }: { labels: string[]; evals: EvalPoint[]; best: BestEval | null }) {
  const [which, setWhich] = useState<'latest' | 'best'>('latest');
  const latest = [...evals].reverse().find((e) => e.confusion);
  const bestEval = best ? evals.find((e) => e.step === best.step && e.confusion) : undefined;
  const shown = which === 'best' && bestEval ? bestEval : latest;
  if (!shown?.confusion) return <p className="muted small">The confusion matrix appears after the first evaluation.</p>;
  const c = shown.confusion;
  const K = labels.length;
  const rowTotals = c.map((r) => r.reduce((a, b) => a + b, 0));
  const colTotals = labels.map((_, k) => c.reduce((s, r) => s + r[k], 0));
  const total = rowTotals.reduce((a, b) => a + b, 0);
  const shade = (n: number, row: number) => (rowTotals[row] ? n / rowTotals[row] : 0);
  return (
    <div className="confusion" data-testid="confusion-matrix" data-step={shown.step}>
      <div className="confusion-head">
        <strong>
          Confusion matrix · step {shown.step}
          {best?.step === shown.step ? ' (best)' : ''}
        </strong>
        {bestEval && bestEval.step !== latest?.step && (
          <span className="segmented segmented-small" role="radiogroup" aria-label="Which evaluation">
            {(['latest', 'best'] as const).map((w) => (
              <label key={w} className={which === w ? 'selected' : ''}>
                <input type="radio" name="confusion-which" value={w} checked={which === w} onChange={() => setWhich(w)} data-testid={`confusion-${w}`} />
                {w === 'latest' ? `latest (step ${latest?.step})` : `best (step ${bestEval.step})`}
              </label>
            ))}
          </span>
        )}
      </div>
      <div className="table-scroll">
        <table className="confusion-table">
          <thead>
            <tr>
              <th scope="col" className="corner">
                true ↓ · predicted →
              </th>
              {labels.map((n) => (
                <th scope="col" key={n} className="num" title={n}>
                  {n}
                </th>
              ))}
              <th scope="col" className="num muted">
                recall
              </th>
            </tr>
          </thead>
          <tbody>
            {labels.map((n, i) => (
              <tr key={n} data-testid="confusion-row" data-label={n}>
                <th scope="row" title={n}>
                  {n}
                </th>
                {c[i].map((v, k) => (
                  <td
                    key={k}
                    className={`num cell ${i === k ? 'cell-hit' : 'cell-miss'}`}
                    style={{ ['--shade' as string]: shade(v, i).toFixed(3) }}
                    data-testid={`confusion-${i}-${k}`}
                  >
                    {formatInt(v)}
                  </td>
                ))}
                <td className="num muted">{rowTotals[i] ? formatPercent(c[i][i] / rowTotals[i]) : '–'}</td>
              </tr>
            ))}
            <tr>
              <th scope="row" className="muted">
                precision
              </th>
              {labels.map((_, k) => (
                <td key={k} className="num muted">
                  {colTotals[k] ? formatPercent(c[k][k] / colTotals[k]) : '–'}
                </td>
              ))}
              <td className="num muted" title="accuracy">
                {K > 0 && total ? formatPercent(c.reduce((s, r, i) => s + r[i], 0) / total) : '–'}
              </td>
            </tr>
          </tbody>
        </table>
      </div>
    </div>
  );
}
