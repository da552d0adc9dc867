"""Creates tiny random Hugging Face models for lib2expert's import tests, and reports what
`transformers` computes with them.

    python make_models.py make <out_dir>          # writes <out_dir>/llama and <out_dir>/qwen2
    python make_models.py probe <model_dir> <ids_json> <prompt_json>

`make`: a Llama with grouped-query attention, llama3 rotary scaling, an untied head,
sharded safetensors in fp32 and a Llama-3-style chat template; a Qwen2 with q/k/v biases,
tied embeddings, bf16 weights and a ChatML template with a default system prompt. Both
share a byte-level BPE trained here (digits split, like lib2expert's own).

`probe`: prints JSON with fp32 logits of `ids`, 20 greedy tokens after `prompt` (no stop
token), and the chat template's ids for a fixed conversation.
"""
import json
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content.strip() + '<|im_end|>' + '\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

CORPUS = [
    f"The town of Velmora {i} exports salt. {i} + {i * 3} = {i * 4}. What is {i} * 2? Answer: {2 * i}"
    for i in range(300)
] + ["Hello there, how are you? I don't know. The river Disen rises in the High Vale."] * 20


def tokenizer(specials):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def randomize(model):
    # Biases and norm gains start at 0 and 1: make them random so the test sees them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)


def make(out):
    torch.manual_seed(0)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer(specials),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )
    fast.chat_template = LLAMA_TEMPLATE
    cfg = LlamaConfig(
        vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        rope_theta=50000.0, bos_token_id=0, eos_token_id=4,
    )
    m = LlamaForCausalLM(cfg)
    randomize(m)
    m.save_pretrained(f"{out}/llama", max_shard_size="60KB")
    fast.save_pretrained(f"{out}/llama")

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer(specials),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    cfg = Qwen2Config(
        vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10000.0,
        eos_token_id=0,
    )
    m = Qwen2ForCausalLM(cfg)
    randomize(m)
    m.to(torch.bfloat16).save_pretrained(f"{out}/qwen2")
    fast.save_pretrained(f"{out}/qwen2")


def probe(d, ids, prompt):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        gen = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0,
        )
    conv = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5\nAnswer: 5"}]

    def ids_of(x):
        if isinstance(x, dict) or hasattr(x, "input_ids"):
            x = x["input_ids"]
        return list(x)

    prompt_ids = ids_of(tok.apply_chat_template(conv[:1], add_generation_prompt=True, tokenize=True))
    full_ids = ids_of(tok.apply_chat_template(conv, tokenize=True))
    print(json.dumps({"logits": logits.tolist(), "gen": gen[0, len(prompt):].tolist(),
                      "chat_prompt": prompt_ids, "chat_full": full_ids}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        probe(sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]))
