"""Parameter-efficient fine-tuning modes on a tiny random BERT, alone and through the clf task."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from ctxbench.bench.config import Train, load_sweep
from ctxbench.tasks.model.encoder import n_params, pool_hidden
from ctxbench.tasks.model.peft import (KINDS, adalora_schedule, apply_peft, attach_saved, orthogonal_penalty,
                                       peft_inside, prefix_positions, save_finetuned)
from ctxbench.tasks.model.train import fit, optimizer_steps
from ctxbench.bench.results import read_jsonl
from ctxbench.bench.run.runner import run_sweep
from ctxbench.strategies import ConfigError
from ctxbench.tasks import Context

PEFT = [k for k in KINDS if k != "full"]


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64))


def train_steps(model: torch.nn.Module, steps: int) -> list[float]:
    """AdamW steps on a pooled-output regression, the way tasks/clf.py's fit steps."""
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (4, 24))
    mask = torch.ones_like(ids)
    mask[2, 12:] = 0
    target = torch.randn(4, 32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    model.train()
    with adalora_schedule(model):
        for _ in range(steps):
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, d)
            loss = F.mse_loss(pool_hidden(hidden, mask, "mean"), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    return losses


def test_kinds_match_the_config_validation():
    for kind in KINDS:
        assert load_sweep("clf", [f"train.finetune={kind}"]).train.finetune == kind
    with pytest.raises(ConfigError, match="adalora"):
        load_sweep("clf", ["train.finetune=loha"])
    with pytest.raises(ConfigError, match="prefix_tokens"):
        load_sweep("clf", ["train.prefix_tokens=0"])
    with pytest.raises(ConfigError, match="together < 1"):
        load_sweep("clf", ["train.adalora_tinit=0.5", "train.adalora_tfinal=0.5"])
    with pytest.raises(ConfigError, match="adalora_init_r"):
        load_sweep("clf", ["train.finetune=adalora", "train.lora_r=16"])
    assert load_sweep("clf", ["train.finetune=lora", "train.lora_r=16"]).train.lora_r == 16  # init_r is adalora's


def test_full_is_the_encoder_itself():
    enc = tiny_bert()
    assert apply_peft(enc, Train(finetune="full"), 10) is enc


@pytest.mark.parametrize("kind", PEFT)
def test_each_mode_trains_a_step_with_fewer_trainable_params(kind):
    full = n_params(tiny_bert(), trainable=True)
    base = tiny_bert()
    frozen = {k: v.detach().clone() for k, v in base.state_dict().items()}
    model = apply_peft(base, Train(finetune=kind, lora_r=2, adalora_init_r=4, prefix_tokens=4), total_steps=10)
    trainable = n_params(model, trainable=True)
    assert 0 < trainable < full / 5
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = train_steps(model, 1)
    assert all(map(lambda x: x == x, losses))  # finite (not NaN)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, f"{kind}: no trainable parameter changed after one step"
    for k, v in base.state_dict().items():  # the pretrained weights stay frozen
        if k in frozen and "lora" not in k and "ia3" not in k:
            assert torch.equal(v, frozen[k]), k


def test_prefix_attends_to_trained_vectors_and_respects_the_mask():
    model = apply_peft(tiny_bert().eval(), Train(finetune="prefix", prefix_tokens=4), 10).eval()
    ids = torch.randint(5, 200, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    a = model(input_ids=ids, attention_mask=mask).last_hidden_state
    ids2 = ids.clone()
    ids2[1, 10:] = 7
    assert torch.allclose(a[1, :10], model(input_ids=ids2, attention_mask=mask).last_hidden_state[1, :10])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    assert not torch.allclose(a, model(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_prefix_costs_positions_on_learned_absolute_positions():
    train = Train(finetune="prefix", prefix_tokens=4)
    assert prefix_positions(tiny_bert(), train) == 4
    assert prefix_positions(tiny_bert(), Train(finetune="lora")) == 0
    apply_peft(tiny_bert(), train, 10, longest_input=60)  # 60 + 4 = 64 positions: fits
    with pytest.raises(ConfigError, match="lower the budget by 1"):
        apply_peft(tiny_bert(), train, 10, longest_input=61)


def test_adalora_schedule_allocates_ranks_and_stays_scoped():
    model = apply_peft(tiny_bert(), Train(finetune="adalora", lora_r=2, adalora_init_r=4, adalora_tinit=0.2,
                                          adalora_tfinal=0.2), total_steps=10)
    tuner = model.base_model
    cfg = tuner.peft_config["default"]
    assert (cfg.total_step, cfg.tinit, cfg.tfinal, cfg.init_r, cfg.target_r) == (10, 2, 2, 4, 2)
    assert orthogonal_penalty(tuner).requires_grad
    train_steps(model, 10)
    assert cfg.rank_pattern, "update_and_allocate never reached the final allocation"
    kept = sum(sum(map(bool, m)) for m in cfg.rank_pattern.values())
    assert kept == 2 * len(cfg.rank_pattern)  # the budget: target_r on average per adapter
    # outside the context no hook fires: another optimizer over the same params leaves the pattern alone
    pattern = {k: list(v) for k, v in cfg.rank_pattern.items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    opt.step()
    assert {k: list(v) for k, v in cfg.rank_pattern.items()} == pattern


def test_adalora_refuses_a_schedule_with_no_allocation_phase():
    with pytest.raises(ConfigError, match="no rank-allocation phase"):
        apply_peft(tiny_bert(), Train(finetune="adalora"), total_steps=1)  # e.g. one epoch of one batch


def test_lora_targets_default_to_the_family_and_wrong_ones_name_the_family_default():
    from transformers import LlamaConfig, LlamaModel

    llama = LlamaModel(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2))
    model = apply_peft(llama, Train(finetune="lora"), 10)  # unset: Llama's q_proj, v_proj
    adapted = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(ConfigError, match=r"q_proj"):
        llama = LlamaModel(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2))
        apply_peft(llama, Train(finetune="lora", lora_target_modules=("query", "value")), 10)


def test_optimizer_steps_counts_fit_steps():
    t = Train(epochs=3, batch_size=8, grad_accum=2)
    assert optimizer_steps(5, t) == 3 * 3  # 5 batches -> 3 steps per epoch (the last one partial)
    assert optimizer_steps(1, dataclasses.replace(t, grad_accum=1)) == 3
    assert optimizer_steps(5, dataclasses.replace(t, steps=7)) == 7  # equal steps for every strategy


def _qa_batches(n, bs=2):
    return lambda gen: [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]


@pytest.mark.parametrize("kind", KINDS)
def test_peft_inside_a_head_model_trains_the_head_keeps_the_base_and_round_trips(kind, tmp_path):
    """QA's path: the kind wraps the encoder inside BertForQuestionAnswering; the shared fit loop
    trains it; save_finetuned + from_pretrained + attach_saved give back the same model."""
    from transformers import AutoModelForQuestionAnswering, BertForQuestionAnswering

    cfg = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertForQuestionAnswering(cfg)
    full = n_params(model, trainable=True)
    base = {k: v.detach().clone() for k, v in model.bert.state_dict().items()}
    head = model.qa_outputs.weight.detach().clone()
    train = Train(finetune=kind, lora_r=2, adalora_init_r=4, prefix_tokens=4, epochs=3, batch_size=2, lr=1e-2,
                  warmup_ratio=0.0)
    model = peft_inside(model, train, optimizer_steps(2, train), longest_input=20)
    trainable = n_params(model, trainable=True)
    assert (trainable == full) if kind == "full" else (0 < trainable < full / 5)
    torch.manual_seed(1)
    ids = torch.randint(5, 200, (4, 20))
    sp, ep = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])

    def loss(net, idx):
        return net(input_ids=ids[idx], attention_mask=torch.ones_like(ids[idx]), start_positions=sp[idx],
                   end_positions=ep[idx]).loss

    info = fit(model, _qa_batches(4), loss, train, 0, torch.device("cpu"))
    assert info["optimizer_steps"] == info["planned_steps"] == 6 and info["train_loss_last"] < info["train_loss_first"]
    assert not torch.equal(model.qa_outputs.weight, head)  # the task head trains under every kind
    inner = model.bert.get_base_model() if kind != "full" else model.bert
    moved = [k for k, v in inner.state_dict().items() if k in base and not torch.equal(v, base[k])]
    assert bool(moved) == (kind == "full"), moved  # frozen means frozen
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=torch.ones_like(ids)).start_logits
    save_finetuned(model, tmp_path)
    again = attach_saved(AutoModelForQuestionAnswering.from_pretrained(tmp_path), tmp_path).eval()
    with torch.no_grad():
        got = again(input_ids=ids, attention_mask=torch.ones_like(ids)).start_logits
    assert torch.allclose(got, want, atol=1e-5)


def test_fit_with_equal_steps_stops_at_the_step_budget_and_scores_the_last_weights():
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    calls = []

    def evaluate(m):
        calls.append(1)
        return float(len(calls))

    train = Train(epochs=100, batch_size=3, steps=5, patience=1, warmup_ratio=0.0)
    info = fit(model, lambda g: [list(range(i, min(i + 3, 10))) for i in range(0, 10, 3)],
               lambda net, idx: F.cross_entropy(net(x[idx]), y[idx]), train, 0, torch.device("cpu"),
               evaluate=evaluate, tokens=lambda i: 4)
    assert info["optimizer_steps"] == 5 and info["epochs_run"] == 2  # 4 batches an epoch: 4 + 1
    assert info["train_examples_seen"] == 13 and info["train_tokens_seen"] == 52


@pytest.mark.parametrize("kind", PEFT)
def test_modes_run_through_the_clf_task(tiny_model, tiny_data, tmp_path, cache_env, kind):
    sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", "limits.train=null",
                               "limits.val=null", "limits.test=null", "mode=finetune", f"train.finetune={kind}",
                               "train.epochs=2", "train.batch_size=16", "train.lr=0.001", "seeds=[0]",
                               "strategies=[head, {name: hierarchical, pool: mean}]", "budgets=[32]",
                               "train.prefix_tokens=4"])
    summary = run_sweep(sweep, tmp_path / "r", ctx=Context(device=torch.device("cpu"), progress=False),
                        progress=False)
    assert summary.ok, summary.failed
    for r in read_jsonl(tmp_path / "r" / "clf" / "runs.jsonl"):
        m = r["measurements"]
        assert r["spec"]["train"]["finetune"] == kind
        assert 0 < m["trainable_params"] < m["total_params"] / 5
        assert m["train_examples_per_s"] > 0 and m["train_tokens_per_s"] > 0 and m["peak_memory_mb"] > 0


def test_equal_steps_counts_documents_not_a_strategys_windows():
    t = Train(epochs=3, batch_size=8, schedule="equal_steps")
    # 40 documents: head makes 5 batches an epoch, sliding's 120 windows 15; both take head's 3 x 5 steps
    assert optimizer_steps(5, t, units=40) == optimizer_steps(15, t, units=40) == 15
    assert optimizer_steps(15, dataclasses.replace(t, schedule="epochs"), units=40) == 45  # the epoch rule
    assert optimizer_steps(15, dataclasses.replace(t, steps=7), units=40) == 7


def test_schedule_auto_resolves_by_mode_and_task_and_keeps_probe_run_ids():
    from ctxbench.bench.config import RunSpec, StrategySpec
    from ctxbench.bench.results import run_id

    def spec(task, mode):
        return RunSpec(task=task, dataset="x", model="m", mode=mode, strategy=StrategySpec("head"), budget=8, seed=0)

    assert spec("clf", "probe").train.schedule == "epochs" and "schedule" not in spec("clf", "probe").to_dict()["train"]
    assert spec("clf", "finetune").train.schedule == "equal_steps" == spec("ner", "finetune").train.schedule
    assert spec("qa", "finetune").train.schedule == "epochs"  # one QA model serves every strategy
    assert spec("clf", "finetune").to_dict()["train"]["schedule"] == "equal_steps"
    explicit = dataclasses.replace(spec("clf", "probe"), train=Train(schedule="epochs"))
    assert run_id(explicit.to_dict()) == run_id(spec("clf", "probe").to_dict())


def test_fine_tuned_strategies_take_equal_steps_by_default(tiny_model, tiny_data, tmp_path, cache_env):
    """head (one window a document) and sliding (several) take the same optimizer steps by default; the
    epoch rule (train.schedule=epochs) gives sliding more, as it did before."""
    common = [f"model={tiny_model}", f"dataset={tiny_data}", "limits.train=24", "limits.val=12", "limits.test=12",
              "mode=finetune", "train.finetune=lora", "train.epochs=1", "train.batch_size=8", "seeds=[0]",
              "strategies=[head, {name: sliding, pool: mean, max_windows: 4}]", "budgets=[16]", "cost_repeats=0"]
    steps = {}
    for schedule in ("auto", "epochs"):
        sweep = load_sweep("clf", [*common, f"train.schedule={schedule}"])
        out = tmp_path / schedule
        assert run_sweep(sweep, out, ctx=Context(device=torch.device("cpu"), progress=False), progress=False).ok
        for r in read_jsonl(out / "clf" / "runs.jsonl"):
            steps[schedule, r["spec"]["strategy"]["name"]] = r["measurements"]["optimizer_steps"]
            assert r["measurements"]["schedule"] == ("equal_steps" if schedule == "auto" else "epochs")
    assert steps["auto", "head"] == steps["auto", "sliding"] == 3  # 24 documents / 8
    assert steps["epochs", "sliding"] > steps["epochs", "head"] == 3


def test_equal_steps_is_refused_where_one_model_serves_every_strategy_and_for_lbfgs_probes():
    with pytest.raises(ConfigError, match="already equal"):
        load_sweep("qa", ["train.schedule=equal_steps"])
    with pytest.raises(ConfigError, match="L-BFGS"):
        load_sweep("clf", ["mode=probe", "train.optimizer=lbfgs", "train.schedule=equal_steps"])
    with pytest.raises(ConfigError, match="train.schedule must be one of"):
        load_sweep("clf", ["train.schedule=sometimes"])


def test_fixed_steps_keep_the_run_id_whatever_the_schedule():
    from ctxbench.bench.config import RunSpec, StrategySpec
    from ctxbench.bench.results import run_id

    ids = {run_id(RunSpec(task="clf", dataset="x", model="m", mode="finetune", strategy=StrategySpec("head"),
                          budget=8, seed=0, train=Train(steps=150, schedule=s)).to_dict())
           for s in ("auto", "epochs", "equal_steps")}
    assert len(ids) == 1
