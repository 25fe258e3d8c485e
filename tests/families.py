"""Tiny random models of six families, built from config and saved to a folder each.

BERT, DistilBERT, DeBERTa-v2 and ModernBERT take the packaged WordPiece vocabulary; RoBERTa gets a
byte-level BPE tokenizer trained here on inline text and no ``model_max_length`` (the case where only
the model's offset position table says 512 of 514 are usable); the Llama-style decoder gets a BPE
tokenizer with a BOS token and no CLS/SEP/PAD.
"""
from __future__ import annotations

import random
from pathlib import Path

FAMILIES = ("bert", "roberta", "distilbert", "deberta-v2", "modernbert", "llama")
POSITIONS = 96  # every family's position table (RoBERTa: 96 + 2 offset rows)


def corpus(n: int = 400) -> list[str]:
    from tests.conftest import FILLER, WORDS

    rng = random.Random(0)
    words = FILLER + [w for ws in WORDS.values() for w in ws] + "Paris London Alice Bob Acme what who where".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) + "." for _ in range(n)]


def _wordpiece():
    from transformers import AutoTokenizer

    from ctxbench.tasks.model.packaged import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.model_max_length = POSITIONS
    return tok


def _roberta_tokenizer(folder: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    return RobertaTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))


def _llama_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1",
                                                      special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=POSITIONS)


def build(family: str, folder: Path) -> str:
    """Save a 2-layer, hidden-32 random ``family`` model and its tokenizer into ``folder``."""
    import torch
    import transformers as T

    folder.mkdir(parents=True, exist_ok=True)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if family == "roberta":
        tok = _roberta_tokenizer(folder)
        cfg = T.RobertaConfig(vocab_size=len(tok), max_position_embeddings=POSITIONS + 2, pad_token_id=tok.pad_token_id,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **small)
        model = T.RobertaModel
    elif family == "llama":
        tok = _llama_tokenizer()
        cfg = T.LlamaConfig(vocab_size=len(tok), max_position_embeddings=POSITIONS, num_key_value_heads=2,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **small)
        model = T.LlamaModel
    else:
        tok = _wordpiece()
        ids = dict(pad_token_id=tok.pad_token_id)
        if family == "bert":
            cfg = T.BertConfig(vocab_size=tok.vocab_size, max_position_embeddings=POSITIONS, **small)
            model = T.BertModel
        elif family == "distilbert":
            cfg = T.DistilBertConfig(vocab_size=tok.vocab_size, max_position_embeddings=POSITIONS, dim=32, n_layers=2,
                                     n_heads=2, hidden_dim=64, **ids)
            model = T.DistilBertModel
        elif family == "deberta-v2":
            cfg = T.DebertaV2Config(vocab_size=tok.vocab_size, max_position_embeddings=POSITIONS,
                                    relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                    **ids, **small)
            model = T.DebertaV2Model
        elif family == "modernbert":
            cfg = T.ModernBertConfig(vocab_size=tok.vocab_size, max_position_embeddings=POSITIONS, local_attention=16,
                                     global_attn_every_n_layers=2, cls_token_id=tok.cls_token_id,
                                     sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                                     eos_token_id=tok.sep_token_id, **ids, **small)
            model = T.ModernBertModel
        else:
            raise ValueError(family)
    torch.manual_seed(0)
    model(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
