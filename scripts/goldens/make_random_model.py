#!/usr/bin/env python3
"""Write a randomly initialised GPT2LMHeadModel (float32 safetensors) plus tokenizer files.

    python3 scripts/goldens/make_random_model.py --arch gpt2-small|gpt2-tiny --out DIR \
        [--tokenizer-from DIR] [--vocab-size N] [--seed 0]

gpt2-small: n_embd 768, 12 layers, 12 heads, n_positions 1024 (GPT-2 small shape, ~124M parameters)
gpt2-tiny : n_embd 32, 2 layers, 4 heads, n_positions 64 (same shape as test/fixtures/tiny-gpt2)
Both default to vocab 50257 (GPT-2's). Activation gelu_new, layer_norm_epsilon 1e-5, all dropout 0,
tied embeddings, transformers' own initialisation (normal, std initializer_range=0.02) under --seed.

--tokenizer-from copies tokenizer.json, tokenizer_config.json and special_tokens_map.json from that
directory (e.g. the tiny byte-level BPE of test/fixtures/tiny-gpt2); the model's vocab may be larger
than the tokenizer's, which is fine (extra rows are never indexed). bos/eos ids in config.json are
then the tokenizer's <|endoftext|> id.
"""
import argparse
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ARCHS = {
    "gpt2-small": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    "gpt2-tiny": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
}
# Llama-family shapes of real small models (random weights, saved in bfloat16 as those models ship)
LLAMA_ARCHS = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                                   tie_word_embeddings=True, vocab_size=49152, hidden_act="silu")),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                                   num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                                   tie_word_embeddings=True, vocab_size=151936, hidden_act="silu")),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS) + sorted(LLAMA_ARCHS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer-from", help="directory holding tokenizer.json etc. to copy")
    ap.add_argument("--vocab-size", type=int, default=50257)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    if args.arch in LLAMA_ARCHS:
        return make_llama_family(args)

    eos_id = 50256
    tok_vocab = None
    if args.tokenizer_from:
        with open(os.path.join(args.tokenizer_from, "tokenizer.json"), encoding="utf-8") as f:
            tj = json.load(f)
        vocab = tj["model"]["vocab"]
        added = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
        tok_vocab = max(list(vocab.values()) + list(added.values())) + 1
        if "<|endoftext|>" in added:
            eos_id = added["<|endoftext|>"]
        elif "<|endoftext|>" in vocab:
            eos_id = vocab["<|endoftext|>"]
        if tok_vocab > args.vocab_size:
            ap.error("tokenizer has %d ids, more than --vocab-size %d" % (tok_vocab, args.vocab_size))
    if eos_id >= args.vocab_size:
        eos_id = args.vocab_size - 1

    cfg = GPT2Config(
        vocab_size=args.vocab_size, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        initializer_range=0.02, tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
        **ARCHS[args.arch],
    )
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(cfg).float().eval()
    os.makedirs(args.out, exist_ok=True)
    try:
        model.save_pretrained(args.out, safe_serialization=True)
    except TypeError:
        model.save_pretrained(args.out)
    if args.tokenizer_from:
        for name in TOKENIZER_FILES:
            src = os.path.join(args.tokenizer_from, name)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(args.out, name))

    # reload and run a forward pass as a check
    try:
        m2 = GPT2LMHeadModel.from_pretrained(args.out, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        m2 = GPT2LMHeadModel.from_pretrained(args.out, torch_dtype=torch.float32, attn_implementation="eager")
    sd1, sd2 = model.state_dict(), m2.state_dict()
    assert sorted(sd1) == sorted(sd2), "reloaded model has other parameter names"
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), "reloaded tensor %s differs" % k
    # (the freshly built model may use another attention implementation: compare logits loosely)
    ids = torch.tensor([[eos_id, 1, 2, 3, 4, 5]])
    m2.eval()
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = m2(input_ids=ids).logits
    max_diff = (a - b).abs().max().item()
    assert max_diff < 1e-4, "reloaded model logits differ by %g" % max_diff
    n_params = sum(p.numel() for p in model.parameters())
    st = os.path.join(args.out, "model.safetensors")
    print(json.dumps({
        "arch": args.arch, "out": args.out, "params": n_params, "vocab_size": args.vocab_size,
        "tokenizer_vocab": tok_vocab, "eos_token_id": eos_id,
        "files": {f: os.path.getsize(os.path.join(args.out, f)) for f in sorted(os.listdir(args.out))},
        "model_safetensors_mb": round(os.path.getsize(st) / 2**20, 2),
        "logits_shape": list(a.shape), "reload_logits_max_diff": max_diff,
    }, indent=1))


def make_llama_family(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    kind, shape = LLAMA_ARCHS[args.arch]
    cfg_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if kind == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = cfg_cls(initializer_range=0.02, bos_token_id=0, eos_token_id=0, **shape)
    torch.manual_seed(args.seed)
    model = model_cls(cfg).to(torch.bfloat16).eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    if args.tokenizer_from:
        for name in TOKENIZER_FILES:
            src = os.path.join(args.tokenizer_from, name)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(args.out, name))
    print(json.dumps({"arch": args.arch, "out": args.out, "params": sum(p.numel() for p in model.parameters()),
                      "files": {f: os.path.getsize(os.path.join(args.out, f)) for f in sorted(os.listdir(args.out))}}, indent=1))


if __name__ == "__main__":
    main()
