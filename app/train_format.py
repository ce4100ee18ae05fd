"""Small formatting helpers of the Train page: byte sizes, durations and a run's key settings for people."""
from __future__ import annotations


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def human_seconds(s: float | None) -> str:
    s = max(0, int(round(s or 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def settings_summary(config: dict) -> str:
    """The key settings of a queued run, as the submit confirmation repeats them: method, steps (or epochs), learning
    rate, rows, batch, rank, seed."""
    from training import registry

    method = config.get("method") or "lora"
    spec = registry.get(method) if method in registry.names() else None
    batch, rows, epochs = config.get("batch_size") or 1, config.get("max_train_rows"), config.get("epochs") or 1
    if config.get("max_steps"):
        steps = f"{config['max_steps']:,} step{'s' * (config['max_steps'] != 1)}"
    else:
        per_epoch = f", at most {-(-rows // batch) * epochs:,} steps" if rows else ""
        steps = f"{epochs} epoch{'s' * (epochs != 1)}{per_epoch}"
    lr = config.get("lr")
    if lr is None and spec is not None:
        lr_text = f"lr {spec.default_lr:g} ({spec.label}'s default)"
    else:
        lr_text = f"lr {lr:g}" if lr is not None else "default lr"
    parts = [registry.label(method), steps, lr_text,
             f"{rows:,} train rows" if rows else "all train rows", f"batch {batch}"]
    if spec is None or "rank" in spec.takes:
        parts.append(f"rank {config.get('rank')}")
    parts.append(f"seed {config.get('seed')}")
    return " · ".join(parts)


def setting_text(cfg: dict) -> str:
    """' · rank 8' (the method's own description of its setting: no rank for a full fine-tune), or ''."""
    from training import registry

    method = cfg.get("method")
    spec = registry.get(method) if method in registry.names() else None
    return f" · {spec.describe(cfg)}" if spec is not None and spec.describe else ""
