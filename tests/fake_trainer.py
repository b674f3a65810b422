#!/usr/bin/python3
"""A stand-in for ./train_gpt that follows its command-line and run-directory contract.

    fake_trainer.py -c CONFIG.json [--set dotted.key=VALUE ...] [--out DIR]
    fake_trainer.py --resume DIR [--set ...]

It writes DIR/config.json (extends resolved, overrides applied), DIR/log.jsonl with a
deterministic made-up loss curve, DIR/ckpt_XXXXXXXX.bin every checkpoint.every steps and
DIR/summary.json at the end. The curve depends on the config (all but the seed) and on
the seed; the noise depends only on (seed, step), so a resumed run logs exactly what an
uninterrupted one would.

Config keys it reads (all optional): train.steps (10), train.seed (0), checkpoint.every (0),
eval.every (0: at the last step only), log.every (1), schedule.lr (1e-3), schedule.warmup (0),
optimizer.name, optimizer.eps_schedule (when true, lines carry an "eps" field).

Test hooks, from the environment:
  FAKE_TRAINER_CALLS=PATH       append {"event": "start"/"end", "argv", "out", "resume", "t"}
                                lines to PATH (an invocation counter)
  FAKE_TRAINER_SLEEP=SECONDS    sleep this long per step
  FAKE_TRAINER_FAIL=KEY=VALUE[;KEY=VALUE]
                                a run whose config has KEY equal to VALUE (parsed like --set)
                                prints "error: ..." and exits 1, after FAKE_TRAINER_FAIL_STEP
                                steps (default 0)
  FAKE_TRAINER_CRASH=KEY=VALUE@STEP
                                a run with that setting dies by SIGKILL right after step STEP
                                (log and checkpoint of that step written, no summary.json)
  FAKE_TRAINER_KILL_PARENT=1    with FAKE_TRAINER_CRASH: instead of dying, send SIGINT to the
                                parent (the sweep runner: a Ctrl-C of the whole sweep) and
                                wait to be stopped; exit 130 on SIGINT/SIGTERM
"""

import glob
import hashlib
import json
import math
import os
import re
import signal
import sys
import time


def die(msg, code=1):
    sys.stdout.flush()
    sys.stderr.write("error: %s\n" % msg)
    sys.stderr.flush()
    print("fake trainer: exit status %d" % code, flush=True)   # the error is not the last line
    sys.exit(code)


def parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v
    return dst


def load_config(path, depth=0):
    if depth > 8:
        die("%s: extends nests too deep" % path)
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError as e:
        die("cannot read config %s: %s" % (path, e))
    except ValueError as e:
        die("%s: invalid JSON: %s" % (path, e))
    ext = cfg.pop("extends", None)
    if ext is not None:
        base = load_config(os.path.join(os.path.dirname(os.path.abspath(path)), ext), depth + 1)
        cfg = merge(base, cfg)
    return cfg


def get(cfg, key, default=None):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def put(cfg, key, value):
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def unit(*parts):
    """A deterministic number in [0, 1) from the parts."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def matches(cfg, spec):
    key, _, val = spec.partition("=")
    return get(cfg, key.strip(), object()) == parse_value(val.strip())


def parse_args(argv):
    args = {"config": None, "out": None, "resume": None, "sets": []}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-c", "--config", "--out", "--resume", "--set"):
            if i + 1 >= len(argv):
                die("%s needs a value" % a, 2)
            v = argv[i + 1]
            if a == "--set":
                if "=" not in v:
                    die("--set needs dotted.key=VALUE, got %r" % v, 2)
                k, _, val = v.partition("=")
                args["sets"].append((k, parse_value(val)))
            else:
                args[{"-c": "config", "--config": "config"}.get(a, a[2:])] = v
            i += 2
        else:
            die("unknown argument %r" % a, 2)
    if args["resume"] is None and args["config"] is None:
        die("give -c CONFIG.json or --resume DIR", 2)
    return args


def main(argv):
    args = parse_args(argv)
    calls = os.environ.get("FAKE_TRAINER_CALLS")

    def record(event, out):
        if calls:
            line = json.dumps({"event": event, "argv": argv, "out": os.path.abspath(out),
                               "resume": args["resume"] is not None, "t": time.time()})
            fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, (line + "\n").encode())
            os.close(fd)

    if args["resume"] is not None:
        out = args["resume"]
        ckpts = sorted(glob.glob(os.path.join(out, "ckpt_*.bin")))
        ckpts = [c for c in ckpts if re.search(r"ckpt_\d{8}\.bin$", c)]
        if not ckpts:
            die("--resume %s: no checkpoint in the run directory" % out)
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        with open(ckpts[-1]) as f:
            start = json.load(f)["step"]
    else:
        out = args["out"] or "out"
        cfg = load_config(args["config"])
        start = 0
    for k, v in args["sets"]:
        put(cfg, k, v)
    os.makedirs(out, exist_ok=True)
    record("start", out)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)

    log_path = os.path.join(out, "log.jsonl")
    kept = []
    if start > 0 and os.path.exists(log_path):
        with open(log_path) as f:
            kept = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= start]
    with open(log_path, "w") as f:
        f.writelines(kept)

    steps = int(get(cfg, "train.steps", 10))
    seed = get(cfg, "train.seed", 0)
    ck_every = int(get(cfg, "checkpoint.every", 0) or 0)
    ev_every = int(get(cfg, "eval.every", 0) or 0)
    log_every = int(get(cfg, "log.every", 1) or 1)
    lr0 = float(get(cfg, "schedule.lr", 1e-3))
    warmup = int(get(cfg, "schedule.warmup", 0) or 0)
    eps_sched = bool(get(cfg, "optimizer.eps_schedule", False))
    sleep = float(os.environ.get("FAKE_TRAINER_SLEEP", "0") or 0)

    shape = json.loads(json.dumps(cfg))
    put(shape, "train.seed", None)
    u = unit("shape", shape)
    floor = 1.4 + 0.5 * u
    tau = steps / 4.0 + 1.0
    tok_s = 1000.0 + 500.0 * u

    fail = [s for s in os.environ.get("FAKE_TRAINER_FAIL", "").split(";") if s.strip()]
    fail = [s for s in fail if matches(cfg, s)]
    fail_step = int(os.environ.get("FAKE_TRAINER_FAIL_STEP", "0") or 0)
    crash = os.environ.get("FAKE_TRAINER_CRASH", "")
    crash_step = None
    if crash:
        cond, _, st = crash.rpartition("@")
        if matches(cfg, cond):
            crash_step = int(st)

    if fail and fail_step <= start:
        die("fake failure requested for %s" % fail[0])
    print("fake trainer: %s from step %d to %d" % (out, start, steps), flush=True)

    for step in range(start + 1, steps + 1):
        if sleep:
            time.sleep(sleep)
        noise = (unit("n", seed, step) - 0.5) * 0.04
        loss = floor + (4.17 - floor) * math.exp(-step / tau) + noise
        frac = step / steps
        lr = lr0 * min(1.0, step / warmup if warmup else 1.0) * \
            (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        rec = {"step": step}
        if step % log_every == 0 or step == steps:
            rec.update(loss=round(loss, 6), lr=lr, grad_norm=round(1.0 + unit("g", seed, step), 6),
                       tokens_per_s=round(tok_s, 3), ms=round(10.0 + 5 * u, 3))
            if eps_sched:
                rec["eps"] = 1e-8 * 10.0 ** (4.0 * frac)
        is_eval = (ev_every and step % ev_every == 0) or step == steps
        with open(log_path, "a") as f:
            if len(rec) > 1:
                f.write(json.dumps(rec) + "\n")
            if is_eval:
                val = round(loss + 0.05 + (unit("v", seed, step) - 0.5) * 0.01, 6)
                f.write(json.dumps({"step": step, "val_loss": val}) + "\n")
        if ck_every and step % ck_every == 0:
            tmp = os.path.join(out, "ckpt.tmp")
            with open(tmp, "w") as f:
                json.dump({"step": step}, f)
            os.replace(tmp, os.path.join(out, "ckpt_%08d.bin" % step))
        print("step %d/%d loss %.4f" % (step, steps, loss), flush=True)
        if fail and step >= fail_step:
            die("fake failure requested for %s" % fail[0])
        if crash_step is not None and step == crash_step:
            print("fake crash after step %d" % step, flush=True)
            if os.environ.get("FAKE_TRAINER_KILL_PARENT") == "1":
                os.kill(os.getppid(), signal.SIGINT)
                time.sleep(30)
                die("the parent did not stop this run")
            os.kill(os.getpid(), signal.SIGKILL)

    with open(log_path) as f:
        lines = [json.loads(ln) for ln in f if ln.strip()]
    vals = [o["val_loss"] for o in lines if "val_loss" in o]
    losses = [o["loss"] for o in lines if "loss" in o]
    name = get(cfg, "optimizer.name", "adamw")
    summary = {"status": "done", "steps": steps, "final_val_loss": vals[-1] if vals else None,
               "best_val_loss": min(vals) if vals else None,
               "final_train_loss": losses[-1] if losses else None,
               "tokens_per_s": round(tok_s, 3),
               "optimizer_state_bytes": 40000 if name == "muon" else 80000,
               "params": 10000, "wall_s": 0.01 * steps}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    record("end", out)
    return 0


if __name__ == "__main__":
    def _stop(signum, frame):
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    sys.exit(main(sys.argv[1:]))
