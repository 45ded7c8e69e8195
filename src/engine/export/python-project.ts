// "Take it further": a ready-to-run Python project that continues a run from the browser with
// transformers + PEFT on a GPU server or cluster (Trainer runs on Accelerate: `accelerate launch
// train.py` spreads it over GPUs and nodes). It carries the run's data mapping and hyperparameters
// (run_config.json), the adapter trained so far (adapter/, training continues from its weights; the
// optimizer and the schedule start afresh), the data file when the app has it, and writes a PEFT
// adapter folder the app imports back. train.py builds the examples exactly as src/data/examples.ts
// does (same template filling, special tokens, end-of-sequence token, truncation and loss mask).

export class PythonProjectError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PythonProjectError';
  }
}

/** The column mapping of a causal-LM run (src/data/columns.ts ColumnMapping). */
export type ProjectMapping =
  | { kind: 'prompt-completion'; prompt: string; completion: string; template: string }
  | { kind: 'text'; text: string }
  | { kind: 'instruction'; instruction: string; input?: string; output: string };

export interface PythonProjectSpec {
  /** Name for the folder and messages (the adapter's name). */
  name: string;
  /** Hub id or path of the base model (the user can pass --base-model to train.py instead). */
  baseModel: string;
  /** The trained adapter to continue from: adapter_config.json text and adapter_model.safetensors. */
  adapter: { config: string; weights: Uint8Array };
  data: { fileName: string; bytes?: Uint8Array };
  mapping: ProjectMapping;
  hyper: {
    learningRate: number;
    steps: number;
    batchSize: number;
    gradAccum: number;
    maxLength: number;
    warmupSteps: number;
    schedule: 'linear' | 'cosine' | 'constant';
    weightDecay: number;
    maxGradNorm: number;
    validationFraction: number;
    evalEvery: number;
    seed: number;
  };
}

const SCHEDULER: Record<PythonProjectSpec['hyper']['schedule'], string> = { linear: 'linear', cosine: 'cosine', constant: 'constant_with_warmup' };

/** The project's files: relative path -> contents. */
export function pythonProject(spec: PythonProjectSpec): Map<string, string | Uint8Array> {
  let peftConfig: Record<string, unknown>;
  try {
    peftConfig = JSON.parse(spec.adapter.config) as Record<string, unknown>;
  } catch (e) {
    throw new PythonProjectError(`${spec.name}: adapter_config.json is not valid JSON (${(e as Error).message})`);
  }
  if (typeof peftConfig.peft_type !== 'string') {
    throw new PythonProjectError(`${spec.name}: only PEFT adapters continue in Python (this one is an AdapterHub bottleneck adapter, which PEFT does not have)`);
  }
  if (peftConfig.task_type !== 'CAUSAL_LM') throw new PythonProjectError(`${spec.name}: the Python project is for text-generation runs (task ${String(peftConfig.task_type)})`);
  const h = spec.hyper;
  for (const [k, v] of Object.entries(h)) if (!Number.isFinite(v as number) && k !== 'schedule') throw new PythonProjectError(`${spec.name}: ${k} is ${String(v)}`);
  const dataPath = `data/${spec.data.fileName.replace(/[\\/]/g, '_')}`;
  const runConfig = {
    name: spec.name,
    base_model: spec.baseModel,
    data_file: dataPath,
    mapping: spec.mapping,
    continue_from: 'adapter',
    output_dir: 'output',
    training: {
      learning_rate: h.learningRate,
      max_steps: h.steps,
      per_device_train_batch_size: h.batchSize,
      gradient_accumulation_steps: h.gradAccum,
      max_length: h.maxLength,
      warmup_steps: h.warmupSteps,
      lr_scheduler_type: SCHEDULER[h.schedule],
      weight_decay: h.weightDecay,
      max_grad_norm: h.maxGradNorm,
      validation_fraction: h.validationFraction,
      eval_steps: h.evalEvery,
      seed: h.seed,
    },
  };
  const files = new Map<string, string | Uint8Array>();
  files.set('run_config.json', JSON.stringify(runConfig, null, 2) + '\n');
  files.set('train.py', TRAIN_PY);
  files.set('requirements.txt', REQUIREMENTS);
  files.set('adapter/adapter_config.json', spec.adapter.config);
  files.set('adapter/adapter_model.safetensors', spec.adapter.weights);
  if (spec.data.bytes) files.set(dataPath, spec.data.bytes);
  files.set('README.md', readme(spec, dataPath, Boolean(spec.data.bytes)));
  return files;
}

const REQUIREMENTS = `torch>=2.4
transformers>=4.56
peft>=0.17
accelerate>=1.0
safetensors>=0.4
`;

function readme(spec: PythonProjectSpec, dataPath: string, hasData: boolean): string {
  return `# ${spec.name}: continue training with transformers + PEFT

This folder continues the run "${spec.name}" from the browser on a machine with a GPU (or many).
\`adapter/\` holds the adapter trained so far; training goes on from its weights (the optimizer and
the learning-rate schedule start afresh), with the data mapping and hyperparameters of the run
(\`run_config.json\`: edit it, or pass the flags below).

\`\`\`sh
pip install -r requirements.txt
python train.py                                  # one GPU (or the CPU)
accelerate config && accelerate launch train.py  # several GPUs or machines
\`\`\`

Flags: \`--base-model ID_OR_PATH\` (default \`${spec.baseModel}\`), \`--data FILE\` (default \`${dataPath}\`),
\`--max-steps N\`, \`--output DIR\` (default \`output\`), \`--from-scratch\` (a fresh adapter with the same
configuration instead of continuing).
${hasData ? '' : `\nThe data file was not loaded in the app when this project was made: copy \`${spec.data.fileName}\` to \`${dataPath}\` (or pass \`--data\`).\n`}
The result (\`output/adapter_config.json\` and \`output/adapter_model.safetensors\`) is a PEFT adapter:
import it into the app's library, or load it with \`PeftModel.from_pretrained(base, "output")\`.
`;
}

// The training script. Kept free of `datasets` so requirements stay small; the example building
// mirrors src/data/examples.ts line by line.
const TRAIN_PY = String.raw`#!/usr/bin/env python3
"""Continue a fine-tuning run from the browser app with transformers + PEFT (Trainer, on Accelerate).

    python train.py [--base-model ID_OR_PATH] [--data FILE] [--max-steps N] [--output DIR] [--from-scratch]
    accelerate launch train.py ...

Reads run_config.json (data mapping, hyperparameters) beside this file and writes a PEFT adapter to
the output folder (adapter_config.json + adapter_model.safetensors).
"""
import argparse
import csv
import json
import os
import random
import re
import sys

import torch
from peft import get_peft_config, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

HERE = os.path.dirname(os.path.abspath(__file__))
IGNORE_INDEX = -100
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                     "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
          "### Instruction:\n{instruction}\n\n### Response:\n")


def read_rows(path):
    """Rows of a CSV, TSV or JSONL file as dicts of strings (the app's table reader accepts the same)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.lower().endswith((".jsonl", ".ndjson")):
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    obj = json.loads(line)
                    rows.append({k: v if isinstance(v, str) else json.dumps(v) if v is not None else "" for k, v in obj.items()})
            return rows
        text = f.read()
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    return [dict(r) for r in csv.DictReader(text.splitlines(keepends=True), delimiter=delimiter)]


def fill_template(template, cells):
    """{column} placeholders; {{ and }} are literal braces (src/data/columns.ts fillTemplate)."""
    out, i = [], 0
    while i < len(template):
        if template.startswith("{{", i):
            out.append("{"); i += 2
        elif template.startswith("}}", i):
            out.append("}"); i += 2
        elif template[i] == "{":
            j = template.index("}", i)
            out.append(cells.get(template[i + 1:j], "")); i = j + 1
        else:
            out.append(template[i]); i += 1
    return "".join(out)


def build_examples(rows, tok, mapping, max_length):
    """Token ids and labels per row, as src/data/examples.ts builds them for the app."""
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    examples, skipped = [], 0
    for cells in rows:
        if mapping["kind"] == "text":
            text = cells.get(mapping["text"], "")
            if not text.strip():
                skipped += 1; continue
            ids = tok(text, add_special_tokens=True)["input_ids"] + [eos]
            labels = list(ids)
        else:
            if mapping["kind"] == "prompt-completion":
                completion = cells.get(mapping["completion"], "")
                if not cells.get(mapping["prompt"], "").strip() or not completion.strip():
                    skipped += 1; continue
                prompt_ids = tok(fill_template(mapping["template"], cells), add_special_tokens=True)["input_ids"]
            else:
                instruction = cells.get(mapping["instruction"], "")
                extra = cells.get(mapping["input"], "") if mapping.get("input") else ""
                completion = cells.get(mapping["output"], "")
                if not instruction.strip() or not completion.strip():
                    skipped += 1; continue
                if tok.chat_template:
                    content = f"{instruction}\n\n{extra}" if extra.strip() else instruction
                    prompt = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
                    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
                else:
                    prompt = ALPACA_WITH_INPUT.format(instruction=instruction, input=extra) if extra.strip() else ALPACA.format(instruction=instruction)
                    prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
            completion_ids = tok(completion, add_special_tokens=False)["input_ids"] + [eos]
            ids = prompt_ids + completion_ids
            labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
        ids, labels = ids[:max_length], labels[:max_length]
        if all(l == IGNORE_INDEX for l in labels[1:]):
            skipped += 1; continue
        examples.append((ids, labels))
    return examples, skipped


class Examples(torch.utils.data.Dataset):
    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        ids, labels = self.examples[i]
        return {"input_ids": ids, "labels": labels}


def collator(pad_id):
    def collate(batch):
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for r, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[r, :k] = torch.tensor(b["input_ids"])
            labels[r, :k] = torch.tensor(b["labels"])
            mask[r, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    return collate


def main():
    cfg = json.load(open(os.path.join(HERE, "run_config.json"), encoding="utf-8"))
    t = cfg["training"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-model", default=cfg["base_model"])
    ap.add_argument("--data", default=os.path.join(HERE, cfg["data_file"]))
    ap.add_argument("--max-steps", type=int, default=t["max_steps"])
    ap.add_argument("--output", default=os.path.join(HERE, cfg["output_dir"]))
    ap.add_argument("--from-scratch", action="store_true", help="a fresh adapter with the same configuration")
    a = ap.parse_args()
    if not os.path.exists(a.data):
        sys.exit(f"error: no data file at {a.data} (copy the run's data there or pass --data)")

    tok = AutoTokenizer.from_pretrained(a.base_model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = read_rows(a.data)
    examples, skipped = build_examples(rows, tok, cfg["mapping"], t["max_length"])
    if not examples:
        sys.exit(f"error: {a.data} gave no training examples with the mapping {cfg['mapping']}")
    random.Random(t["seed"]).shuffle(examples)
    n_val = int(round(len(examples) * t["validation_fraction"])) if len(examples) > 1 else 0
    val, train = examples[:n_val], examples[n_val:]
    print(f"{len(rows)} rows -> {len(train)} training and {len(val)} validation examples ({skipped} skipped)")

    base = AutoModelForCausalLM.from_pretrained(a.base_model, dtype=torch.float32)
    # the adapter's configuration, then (continuing) its trained values; PEFT will not load prompt
    # learning adapters as trainable through PeftModel.from_pretrained, so the weights go in directly
    adapter_dir = os.path.join(HERE, cfg["continue_from"])
    peft_cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json"), encoding="utf-8"))
    peft_cfg["inference_mode"] = False
    model = get_peft_model(base, get_peft_config(peft_cfg))
    if not a.from_scratch:
        result = set_peft_model_state_dict(model, load_file(os.path.join(adapter_dir, "adapter_model.safetensors")))
        # (prompt learning: PEFT loads prompt_embeddings into the prompt encoder and still lists it)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if k != "prompt_embeddings"]
        if unexpected:
            sys.exit(f"error: the adapter in {adapter_dir} has tensors this model does not: {unexpected[:5]}")
    model.print_trainable_parameters()

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=os.path.join(a.output, "trainer"),
        max_steps=a.max_steps,
        per_device_train_batch_size=t["per_device_train_batch_size"],
        per_device_eval_batch_size=t["per_device_train_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        learning_rate=t["learning_rate"],
        lr_scheduler_type=t["lr_scheduler_type"],
        warmup_steps=t["warmup_steps"],
        weight_decay=t["weight_decay"],
        max_grad_norm=t["max_grad_norm"],
        eval_strategy="steps" if val else "no",
        eval_steps=(t["eval_steps"] or max(1, a.max_steps // 10)) if val else None,
        logging_steps=1,
        save_strategy="no",
        seed=t["seed"],
        bf16=bf16,
        report_to=[],
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Examples(train), eval_dataset=Examples(val) if val else None, data_collator=collator(pad_id))
    trainer.train()
    if trainer.is_world_process_zero():
        model.save_pretrained(a.output)
        trainer.state.save_to_json(os.path.join(a.output, "trainer_state.json"))
        print(f"wrote {a.output}: adapter_config.json, adapter_model.safetensors, trainer_state.json")


if __name__ == "__main__":
    main()
`;
