"""Scoring a model on a task's rows: encoding, loss and label metrics, per-row predictions, the selection metric."""
from __future__ import annotations

import math
from typing import Callable

import torch

LOWER_IS_BETTER = ("loss", "perplexity")


def encode(task, rows: list[dict], tokenizer, cfg, decoder: bool) -> dict[str, torch.Tensor]:
    """Token tensors for one split: classification inputs for encoders; for decoders answer-only SFT, or
    blocks of max_length tokens for plain-text LM tasks."""
    from training import data

    if not decoder:
        return data.encode_classification(rows, tokenizer, cfg.max_length)
    if task.kind == "lm" and rows and "prompt" not in rows[0]:
        return data.encode_lm([row["text"] for row in rows], tokenizer, cfg.max_length)
    return data.encode_causal_sft(task.to_sft(rows), tokenizer, cfg.max_length)


# ----------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model, task, rows: list[dict], tokenizer, cfg, decoder: bool, device,
             should_stop: Callable[[], bool] | None = None, predictions: dict | None = None) -> dict:
    """Loss and the task's metrics on `rows` (deterministic: fixed batches, eval mode).

    `predictions`, when given, receives the per-row labels and predicted labels ("y_true", "y_pred", in row order)
    of a labelled task, for paired comparisons between runs scored on the same rows.
    """
    was_training = model.training
    model.eval()                     # every forward below, the answer choice included: no dropout
    try:
        return _evaluate(model, task, rows, tokenizer, cfg, decoder, device, should_stop, predictions)
    finally:
        model.train(was_training)


def _evaluate(model, task, rows, tokenizer, cfg, decoder, device, should_stop, predictions) -> dict:
    from training import data

    encoded = encode(task, rows, tokenizer, cfg, decoder)
    total_loss, total_count, logits_all = 0.0, 0, []
    for batch in data.batches(encoded, cfg.batch_size, shuffle=False):
        if should_stop is not None and should_stop():
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        count = int((batch["labels"] != -100).sum()) if decoder else len(batch["labels"])
        total_loss += float(out.loss) * count
        total_count += count
        if not decoder:
            logits_all.append(out.logits.float().cpu())
    loss = total_loss / max(total_count, 1)
    result = {"loss": loss}
    if decoder:
        result["perplexity"] = math.exp(min(loss, 50.0))
        if task.kind in ("classification", "multiple_choice"):
            chosen = _choice_predictions(model, task, rows, tokenizer, cfg, device)
            result.update(_label_metrics(task, rows, chosen))
            _keep(predictions, rows, chosen)
    elif logits_all:
        chosen = torch.cat(logits_all).argmax(-1).tolist()
        result.update(_label_metrics(task, rows[:len(chosen)], chosen))
        _keep(predictions, rows, chosen)
    return result


def _keep(out: dict | None, rows: list[dict], predicted: list[int]) -> None:
    if out is not None and len(predicted) == len(rows):
        out.update(y_true=[int(r["label"]) for r in rows], y_pred=[int(p) for p in predicted])


def _label_metrics(task, rows: list[dict], predictions: list[int]) -> dict:
    from training.metrics import score

    names = [m for m in task.metrics if m not in LOWER_IS_BETTER] or ["accuracy"]
    return {k: float(v) for k, v in score(names, [int(r["label"]) for r in rows], predictions).items()}


@torch.no_grad()
def _choice_predictions(model, task, rows, tokenizer, cfg, device) -> list[int]:
    """For a decoder: per row, the candidate answer with the highest summed log-probability after the prompt."""
    from training import data

    pairs = [{"prompt": task.render(row), "answer": answer} for row in rows for answer in task.candidates(row)]
    encoded = data.encode_causal_sft(pairs, tokenizer, cfg.max_length)
    scores = []
    for batch in data.batches(encoded, cfg.batch_size, shuffle=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        # labels passed too: a prompt-routed adapter (MoE-LoRA routing="prompt", MiLoRA) pools only the unlabelled
        # prompt tokens, so scoring routes on the prompt as generation does, not on prompt + candidate answer
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=batch["labels"]).logits.float()
        target = batch["labels"][:, 1:]                                   # token t+1 is predicted at t
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores += (logp * (target != -100)).sum(-1).tolist()
    predictions, start = [], 0
    for row in rows:
        n = len(task.candidates(row))
        chunk = scores[start:start + n]
        predictions.append(max(range(n), key=chunk.__getitem__))
        start += n
    return predictions


def primary_metric(task) -> str:
    """The validation metric that picks the best step: the loss for LM tasks, else the task's first metric."""
    if task.kind == "lm":
        return "loss"
    return next((m for m in task.metrics if m not in LOWER_IS_BETTER), "accuracy")


def _better(metric: str, new: dict, best: dict | None) -> bool:
    if best is None:
        return True
    if metric in LOWER_IS_BETTER:
        return new[metric] < best[metric]
    return new[metric] > best[metric]
