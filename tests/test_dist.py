"""Data parallelism end to end: mpirun -np 2 ./train_gpt against one-rank runs.

Run from the repository root (make test does): /usr/bin/python3 -m unittest tests.test_dist
Needs ./train_gpt built with MPI, ./prepare_data, mpirun and ../shared/data/tinyshakespeare.txt.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.environ.get("TINYSHAKESPEARE", os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"))

# Open MPI refuses to run as root unless told; CI runs as root. One thread per rank: the
# two ranks share the machine's cores.
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")

MUON = {"name": "adamw", "groups": [
    {"params": "matrices", "name": "muon", "lr": 0.02},
    {"params": ["embeddings", "head", "norms", "biases"], "weight_decay": 0.0}]}
SHAMPOO = {"name": "adamw", "groups": [
    {"params": "matrices", "name": "shampoo", "precondition_frequency": 2, "start_preconditioning_step": 2},
    {"params": ["embeddings", "head", "norms", "biases"]}]}


class DistributedTraining(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for path in ("train_gpt", "prepare_data"):
            if not os.access(os.path.join(ROOT, path), os.X_OK):
                raise AssertionError(f"./{path} is missing: run make first")
        if shutil.which("mpirun") is None:
            raise AssertionError("mpirun is missing: install openmpi-bin (scripts/setup.sh)")
        cls.tmp = tempfile.mkdtemp(prefix="test_dist.")
        cls.data = os.path.join(cls.tmp, "data")
        subprocess.run([os.path.join(ROOT, "prepare_data"), "--input", CORPUS, "--tokenizer", "char", "--out", cls.data],
                       check=True, capture_output=True, cwd=ROOT)
        cls.config = os.path.join(cls.tmp, "tiny.json")
        with open(cls.config, "w") as f:
            json.dump({
                "model": {"arch": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 65},
                "data": {"train": cls.data + "/train_*.bin", "val": cls.data + "/val_*.bin"},
                "train": {"batch_size": 4, "steps": 5, "seed": 3},
                "schedule": {"lr": 3e-3, "warmup": 2},
                "optimizer": {"name": "adamw", "weight_decay": 0.1},
                "eval": {"every": 5, "batches": 2},
                "checkpoint": {"every": 0},
                "log": {"every": 1}}, f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def train(self, out, ranks=1, sets=(), resume=False, check=True):
        out = os.path.join(self.tmp, out)
        args = ["./train_gpt"] + (["--resume", out] if resume else ["-c", self.config, "--out", out])
        for s in sets:
            args += ["--set", s]
        if ranks > 1:
            args = ["mpirun", "-np", str(ranks), "--oversubscribe"] + args
        proc = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        if check:
            self.assertEqual(proc.returncode, 0, f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return out, proc

    @staticmethod
    def losses(out, key="loss"):
        with open(os.path.join(out, "log.jsonl")) as f:
            recs = [json.loads(line) for line in f]
        return {r["step"]: r[key] for r in recs if key in r}

    def assertSameLosses(self, a, b, rel=1e-5, key="loss", steps=None):
        la, lb = self.losses(a, key), self.losses(b, key)
        steps = steps or sorted(la)
        self.assertTrue(steps, f"no {key} in {a}")
        for s in steps:
            self.assertIn(s, lb, f"step {s} missing from {b}")
            self.assertLessEqual(abs(la[s] - lb[s]), rel * abs(la[s]), f"{key} at step {s}: {la[s]} vs {lb[s]}")

    def one_vs_two(self, name, optimizer, rel=1e-5):
        opt = "optimizer=" + json.dumps(optimizer)
        one, _ = self.train(f"{name}_1rank", 1, [opt, "train.grad_accum=2"])
        two, _ = self.train(f"{name}_2ranks", 2, [opt])
        self.assertSameLosses(one, two, rel)
        self.assertSameLosses(one, two, rel, key="val_loss")

    def spread_vs_replicated(self, name, optimizer):
        """Each tensor stepped on one rank and exchanged, against every rank stepping every
        tensor: the same gradients go in, so the same bits must come out."""
        opt = "optimizer=" + json.dumps(optimizer)
        spread, proc = self.train(f"{name}_spread", 2, [opt])
        replicated, _ = self.train(f"{name}_replicated", 2, [opt, "train.spread_matrix_optimizers=false"])
        self.assertSameLosses(spread, replicated, rel=0.0)

    def test_same_global_batch_adamw(self):
        self.one_vs_two("adamw", {"name": "adamw", "weight_decay": 0.1})

    def test_same_global_batch_muon(self):
        self.one_vs_two("muon", MUON)

    def test_distributed_muon_and_shampoo_equal_single_rank_optimizer(self):
        self.spread_vs_replicated("muon", MUON)
        self.spread_vs_replicated("shampoo", SHAMPOO)
        # Against one rank the gradients differ in the last bits (two micro-batches summed
        # inside the GEMM versus by the all-reduce), and Shampoo's inverse fourth roots of
        # nearly singular factors magnify that to ~1e-5 after a few steps.
        self.one_vs_two("shampoo", SHAMPOO, rel=1e-4)

    def test_zero1_matches_plain_data_parallel(self):
        plain, _ = self.train("plain_2ranks", 2)
        zero, proc = self.train("zero_2ranks", 2, ["train.zero=1"])
        self.assertIn("ZeRO-1", proc.stdout)
        self.assertSameLosses(plain, zero)

    def test_resume_on_two_ranks_and_on_one(self):
        sets = ["train.steps=6", "checkpoint.every=3", "checkpoint.keep=0", "train.zero=1"]
        full, _ = self.train("full_2ranks", 2, sets)
        # Resume the step-3 checkpoint on 2 ranks, and on 1 rank with the same global batch.
        for ranks, extra in ((2, []), (1, ["train.grad_accum=2"])):
            out = os.path.join(self.tmp, f"resumed_on_{ranks}")
            os.makedirs(out)
            shutil.copy(os.path.join(full, "ckpt_00000003.bin"), out)
            args = ["--set", "checkpoint.every=0"] + sum((["--set", s] for s in extra), [])
            cmd = ["./train_gpt", "--resume", out] + args
            if ranks > 1:
                cmd = ["mpirun", "-np", str(ranks), "--oversubscribe"] + cmd
            proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
            self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
            self.assertIn("(resumed)", proc.stdout)
            # Two ranks again: the same reductions in the same order, so the same bits.
            self.assertSameLosses(full, out, rel=0.0 if ranks == 2 else 1e-5, steps=[4, 5, 6])

    def test_crossfit_rank_groups_equal_one_rank(self):
        """Bias corrections with crossfit_split "ranks" (even ranks' micro-batches in group A,
        odd ranks' in B) on 2 ranks x grad_accum 2 against one rank with grad_accum 4 and
        "alternating": global micro-batch k * 2 + r is rank r's k-th (the loader's order), so
        both put micro-batches 0 and 2 in A and 1 and 3 in B, and the runs are the same up to
        the order of float sums. The statistics are summed over ranks."""
        rest = {"params": ["embeddings", "head", "norms", "biases"], "name": "adamw", "weight_decay": 0.0}
        for name, group in (("adamw", {"name": "adamw", "weight_decay": 0.1}),
                            ("sophia", {"name": "sophia", "rho": 0.05, "hessian_interval": 2})):
            opt = {"name": "adamw", "groups": [dict(group, params="matrices", correction="full"), rest]}
            one_opt = json.loads(json.dumps(opt))
            one_opt["groups"][0]["crossfit_split"] = "alternating"
            opt["groups"][0]["crossfit_split"] = "ranks"
            one, proc1 = self.train(f"cf_{name}_1rank", 1, ["optimizer=" + json.dumps(one_opt), "train.grad_accum=4"])
            two, proc2 = self.train(f"cf_{name}_2ranks", 2, ["optimizer=" + json.dumps(opt), "train.grad_accum=2"])
            self.assertIn("crossfit_split alternating (A 2, B 2)", proc1.stdout)
            self.assertIn("crossfit_split ranks (A 2, B 2)", proc2.stdout)
            self.assertSameLosses(one, two, 1e-5)
            self.assertSameLosses(one, two, 1e-5, key="val_loss")

    def test_one_rank_failing_stops_the_job(self):
        bad = os.path.join(self.tmp, "bad.json")
        with open(self.config) as f:
            cfg = json.load(f)
        cfg["data"]["train"] = os.path.join(self.tmp, "missing", "train_*.bin")
        with open(bad, "w") as f:
            json.dump(cfg, f)
        out = os.path.join(self.tmp, "failing")
        cmd = ["mpirun", "--oversubscribe", "-np", "1", "./train_gpt", "-c", self.config, "--out", out,
               "--set", "train.steps=100000", ":", "-np", "1", "./train_gpt", "-c", bad, "--out", out]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        self.assertNotEqual(proc.returncode, 0)
        self.assertLess(time.time() - start, 30, "the job should stop within seconds")
        self.assertIn("error: rank 1: data.train", proc.stderr)


if __name__ == "__main__":
    unittest.main()
