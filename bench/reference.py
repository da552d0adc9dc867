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


def main():
    c = json.loads(sys.argv[1])
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
