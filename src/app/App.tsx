// One page, read top to bottom: the device, the data, the base model, the settings, the run, the
// adapters kept in this browser, and a playground to try them.

import { useEffect } from 'react';
import { useApp } from './store';
import { GpuCard, WebGpuHelp } from './components/GpuCard';
import { DataSection } from './components/DataSection';
import { ModelSection } from './components/ModelSection';
import { SettingsSection } from './components/SettingsSection';
import { TrainingSection } from './components/TrainingSection';
import { LibrarySection } from './components/LibrarySection';
import { PlaygroundSection } from './components/PlaygroundSection';

export function App() {
  const gpuStatus = useApp((s) => s.gpu.status);
  const phase = useApp((s) => s.training.phase);
  const last = useApp((s) => s.training.last);
  useEffect(() => {
    void useApp.getState().init();
  }, []);
  const running = !['idle', 'done', 'failed'].includes(phase);
  // Progress in the tab title, for when the page is in the background.
  useEffect(() => {
    document.title = running && last ? `Step ${last.step}/${last.totalSteps} · Fine-tune in your browser` : 'Fine-tune in your browser';
  }, [running, last]);
  // Leaving mid-run loses the steps since the last checkpoint: let the browser ask first (a paused
  // run has just been checkpointed, so it can go without asking).
  const unsaved = running && phase !== 'paused';
  useEffect(() => {
    if (!unsaved) return;
    const warn = (e: BeforeUnloadEvent) => e.preventDefault();
    window.addEventListener('beforeunload', warn);
    return () => window.removeEventListener('beforeunload', warn);
  }, [unsaved]);
  return (
    <div className="page">
      <header className="page-header">
        <div>
          <h1>Fine-tune in your browser</h1>
          <p className="tagline">
            Train an adapter (LoRA, DoRA, IA3, prompt or prefix tuning, bottleneck adapters) or a text classifier on your own data with your own GPU. Nothing is uploaded: the data
            never leaves this machine.
          </p>
        </div>
      </header>
      <main>
        {gpuStatus === 'unavailable' ? (
          <WebGpuHelp />
        ) : (
          <>
            <GpuCard />
            <DataSection />
            <ModelSection />
            <SettingsSection />
            <TrainingSection />
          </>
        )}
        <LibrarySection />
        {gpuStatus !== 'unavailable' && <PlaygroundSection />}
      </main>
      <footer className="page-footer muted small">
        Adapters download as a PEFT folder (adapter_config.json + adapter_model.safetensors, a classifier's with its head as modules_to_save): load them
        with <code>PeftModel.from_pretrained</code>. Bottleneck adapters download in AdapterHub's format for the <code>adapters</code> library.
      </footer>
    </div>
  );
}
