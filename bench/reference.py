"""PyTorch reference for `just bench`: the same GPT (Llama layout: RMSNorm, rotary
embeddings, SDPA attention, SwiGLU MLP), the same batch, threads and optimiser, in eager
mode (and torch.compile when asked). Prints one JSON object on stdout.

Usage: python bench/reference.py '{"n_layer":4,"n_head":4,"n_embd":256,...}'
"""
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, kv, f = c["n_embd"], c["n_head"], c["n_kv_head"], c["intermediate_size"]
        hd = d // h
        self.h, self.kv, self.hd = h, kv, hd
        self.ln1 = nn.Parameter(torch.ones(d))
        self.ln2 = nn.Parameter(torch.ones(d))
        self.q = nn.Linear(d, h * hd, bias=False)
        self.k = nn.Linear(d, kv * hd, bias=False)
        self.v = nn.Linear(d, kv * hd, bias=False)
        self.o = nn.Linear(h * hd, d, bias=False)
        self.gate = nn.Linear(d, f, bias=False)
        self.up = nn.Linear(d, f, bias=False)
        self.down = nn.Linear(f, d, bias=False)
        self.eps = c["norm_eps"]

    def forward(self, x, cos, sin, cache=None, offset=0):
        b, t, d = x.shape
        y = F.rms_norm(x, (d,), self.ln1, self.eps)
        q = self.q(y).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k(y).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v(y).view(b, t, self.kv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.h)
        else:
            kc, vc = cache
            kc[:, :, offset : offset + t] = k
            vc[:, :, offset : offset + t] = v
            k, v = kc[:, :, : offset + t], vc[:, :, : offset + t]
            a = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1 and offset == 0, enable_gqa=self.kv != self.h)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        y = F.rms_norm(x, (d,), self.ln2, self.eps)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c["vocab_size"], c["n_embd"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["n_layer"]))
        self.norm = nn.Parameter(torch.ones(c["n_embd"]))
        self.head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
        hd = c["n_embd"] // c["n_head"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        f = torch.outer(torch.arange(c["max_seq_len"]).float(), inv)
        e = torch.cat((f, f), dim=-1)
        self.register_buffer("cos", e.cos(), persistent=False)
        self.register_buffer("sin", e.sin(), persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, caches=None, offset=0):
        t = idx.shape[1]
        cos, sin = self.cos[offset : offset + t], self.sin[offset : offset + t]
        x = self.emb(idx)
        for i, b in enumerate(self.blocks):
            x = b(x, cos, sin, None if caches is None else caches[i], offset)
        return self.head(F.rms_norm(x, (x.shape[-1],), self.norm, self.c["norm_eps"]))


def train_tps(model, c, batch, micro, seq, steps, compiled):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    fwd = torch.compile(model) if compiled else model
    v = c["vocab_size"]
    data = torch.randint(0, v, (batch, seq + 1))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for m in range(batch // micro):
            x = data[m * micro : (m + 1) * micro, :-1]
            y = data[m * micro : (m + 1) * micro, 1:]
            loss = F.cross_entropy(fwd(x).view(-1, v), y.reshape(-1)) / (batch // micro)
            loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    for _ in range(2):
        step()
    times, phases = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        phases.append(step())
        times.append(time.perf_counter() - t0)
    med = lambda xs: sorted(xs)[len(xs) // 2]
    # Median step time, as the Rust side: robust to a step slowed by another process.
    phase_secs = {k: med([p[i] for p in phases]) for i, k in enumerate(["forward_backward", "clip", "optimizer"])}
    return batch * seq / med(times), phase_secs


@torch.no_grad()
def sample_tps(model, c, batch, prompt, new):
    idx = torch.randint(0, c["vocab_size"], (batch, prompt))
    kv, hd = c["n_kv_head"], c["n_embd"] // c["n_head"]

    def run():
        caches = [
            (torch.zeros(batch, kv, hd * 0 + prompt + new, hd), torch.zeros(batch, kv, prompt + new, hd))
            for _ in range(c["n_layer"])
        ]
        logits = model(idx, caches, 0)[:, -1]
        for s in range(new):
            nxt = logits.argmax(-1, keepdim=True)
            logits = model(nxt, caches, prompt + s)[:, -1]

    run()
    best = 0.0
    for _ in range(3):  # best of three, as the Rust side
        t0 = time.perf_counter()
        run()
        best = max(best, batch * new / (time.perf_counter() - t0))
    return best


def ttq(c):
    """Time to quality: train from our initial weights on our dumped batches with AdamW (the
    pretraining schedule, clipping, weight decay on matrices but not the embedding, bf16 autocast
    when the stage trains in bf16) until the pooled held-out bpb reaches the target."""
    from safetensors.torch import load_file

    d = c["dir"]
    train, held, init = (load_file(f"{d}/{n}.safetensors") for n in ("train", "heldout", "init"))
    m = c["model"]
    model = GPT(m)
    names = {"model.embed_tokens.weight": "emb.weight", "model.norm.weight": "norm", "lm_head.weight": "head.weight"}
    parts = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
             "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"}
    for i in range(m["n_layer"]):
        names[f"model.layers.{i}.input_layernorm.weight"] = f"blocks.{i}.ln1"
        names[f"model.layers.{i}.post_attention_layernorm.weight"] = f"blocks.{i}.ln2"
        for ours, theirs in parts.items():
            names[f"model.layers.{i}.{ours}.weight"] = f"blocks.{i}.{theirs}.weight"
    state = {names[k]: v for k, v in init.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"initial weights do not map: missing {missing}, unexpected {unexpected}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("emb")]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("emb"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
                            lr=c["lrs"][0], betas=(c["beta1"], c["beta2"]), eps=c["eps"])
    fwd = torch.compile(model) if c.get("compile") else model
    v = m["vocab_size"]
    bf16 = c["bf16"]
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))
    inputs, targets = train["input"], train["target"]
    accum = c["accum"]

    def backward(i, scale):
        with ctx():
            logits = fwd(inputs[i])
        loss = F.cross_entropy(logits.float().view(-1, v), targets[i].reshape(-1), reduction="sum") * scale
        loss.backward()
        return loss.item()

    @torch.no_grad()
    def heldout_bpb():
        nats, nbytes = 0.0, 0
        for s in c["sources"]:
            x, y = held[f"{s}.input"], held[f"{s}.target"]
            for j in range(0, x.shape[0], 32):
                with ctx():
                    logits = fwd(x[j : j + 32])
                nats += F.cross_entropy(logits.float().view(-1, v), y[j : j + 32].reshape(-1), reduction="sum", ignore_index=-100).item()
            nbytes += int(held[f"{s}.bytes"][0])
        return nats / math.log(2) / nbytes

    t0 = time.perf_counter()
    backward(0, 1.0 / targets[0].numel())  # warm-up (compiles under torch.compile); no update
    opt.zero_grad(set_to_none=True)
    warmup = time.perf_counter() - t0
    curve, secs, reached, done, step_secs = [[0, 0.0, heldout_bpb()]], 0.0, None, 0, []
    tokens = accum * targets[0].numel()
    for step in range(c["steps"]):
        t = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = c["lrs"][step]
        opt.zero_grad(set_to_none=True)
        loss = sum(backward(step * accum + k, 1.0 / tokens) for k in range(accum))
        if not math.isfinite(loss):
            raise SystemExit(f"loss became {loss} at step {step}")
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        opt.step()
        secs += time.perf_counter() - t
        step_secs.append(time.perf_counter() - t)
        done = step + 1
        if done % c["every"] == 0 or done == c["steps"]:
            bpb = heldout_bpb()
            curve.append([done, secs, bpb])
            print(f"reference ttq{' compiled' if c.get('compile') else ''}: step {done} {secs:.1f}s held-out {bpb:.4f} bpb", file=sys.stderr)
            if bpb <= c["target_bpb"]:
                reached = (done, secs, bpb)
                break
    return {"optimizer": "adamw", "compiled": bool(c.get("compile")), "reached": reached is not None,
            "steps": reached and reached[0], "secs": reached and reached[1], "bpb": reached and reached[2],
            "warmup_secs": warmup, "curve": curve, "tok_per_s": tokens * done / max(secs, 1e-9),
            "median_step_secs": sorted(step_secs)[len(step_secs) // 2]}


def main():
    c = json.loads(sys.argv[1])
    if c.get("ttq"):
        torch.manual_seed(0)
        torch.set_num_threads(c["threads"])
        try:
            print(json.dumps(ttq(c)))
        except Exception as e:  # torch.compile needs a working C++ toolchain; report, do not fail
            if not c.get("compile"):
                raise
            print(json.dumps({"error": str(e).splitlines()[0][:200]}))
        return
    torch.manual_seed(0)
    torch.set_num_threads(c["threads"])
    model = GPT(c)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if c.get("train", True):
        out["train_tok_per_s"], out["phase_secs"] = train_tps(model, c, c["batch_size"], c["micro_batch_size"], c["seq_len"], c["steps"], False)
        if c.get("compile", False):
            try:
                out["train_tok_per_s_compiled"], out["phase_secs_compiled"] = train_tps(model, c, c["batch_size"], c["micro_batch_size"], c["seq_len"], c["steps"], True)
            except Exception as e:  # compile needs a working C++ toolchain; report, do not fail
                out["compile_error"] = str(e).splitlines()[0][:200]
    if c.get("sample", False):
        out["sample_tok_per_s"] = {str(b): sample_tps(model, c, b, c["prompt_len"], c["new_tokens"]) for b in c["sample_batches"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
