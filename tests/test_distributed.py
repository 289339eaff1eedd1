"""Data-parallel training: the sharding and token-weighted reduction in one process, then real
2-worker ``msrun`` jobs on CPU (MCCL): equal to one process with the doubled batch, a failing
worker ending the job, and the compiled engine's reduce hook inside ``mindspore.jit``."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import DEMO_DATA, write_jsonl
from test_eval_during_training import EVAL, TINY as EVAL_TINY, eight_records, entries
from ms_gpt2.infra import runtime
from ms_gpt2.cli import launch
from ms_gpt2.engine import distributed

REPO = Path(__file__).resolve().parents[1]
# Tiny GPT-2, dropout 0; 5 examples, per-device batch 2 x 2 workers: global batches of 4 and 1, so the
# second step leaves rank 1 nothing (the placeholder path) and every step's shards are uneven.
TINY = ["model.n_positions=160", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.dropout=0.0",
        "data.max_seq_len=128", "data.max_summary_len=30", "data.train_ratio=1.0", "data.summary_only_loss=true",
        "training.learning_rate=5.0e-3", "training.warmup_steps=0", "training.logging_steps=1",
        "training.num_train_epochs=2", "training.save_total_limit=5"]


def _write_five(directory):
    rows = [json.loads(line) for line in open(DEMO_DATA, encoding="utf-8")]
    rows = sorted(rows, key=lambda r: len(r["article"]))[:5]
    return write_jsonl(directory / "five.jsonl", rows)


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    return _write_five(tmp_path_factory.mktemp("data"))


def _env():
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # msrun runs `python`
    env["PYTHONPATH"] = str(REPO)
    env.pop(distributed.FAIL_RANK_ENV, None)
    return env


# --------------------------------------------------------------------------------------------------
# In one process
# --------------------------------------------------------------------------------------------------

def test_shards_split_each_global_batch_once_and_weigh_by_scored_tokens():
    pad = 0
    labels = np.array([[5, 6, 7, 0], [5, 6, 0, 0], [5, 0, 0, 0], [5, 6, 7, 8], [5, 6, 7, 0]])
    batch = {"labels": labels, "input_ids": labels + 100}
    shards = [distributed.shard_batch(batch, 2, pad, r, 3) for r in range(3)]
    assert [s.inputs["input_ids"][:, 0].tolist() for s in shards] == [[105, 105], [105, 105], [105]]
    assert np.array_equal(np.concatenate([s.inputs["labels"] for s in shards]), labels)  # each row once, in order
    assert [s.local_tokens for s in shards] == [2 + 1, 0 + 3, 2] and {s.global_tokens for s in shards} == {8}
    assert sum(s.weight for s in shards) == pytest.approx(1.0, abs=1e-12)

    # a short last global batch: the rank past its end runs a placeholder row that weighs nothing
    short = distributed.shard_batch({"labels": labels[:2], "input_ids": labels[:2]}, 2, pad, 1, 2)
    assert len(short.inputs["labels"]) == 1 and short.local_tokens == 0 and short.weight == 0.0


def test_token_weighted_shard_gradients_sum_to_the_global_batch_gradient(tokenizer, five):
    """What the all-reduce computes, summed here by hand: weighting each rank's gradient of its own
    token mean by its share of the batch's scored tokens gives the whole batch's gradient, while the
    plain average of the per-rank means (what averaging per-rank losses would do) does not."""
    import torch  # mindtorch
    from mindtorch import autograd

    from ms_gpt2.data.nlpcc import NLPCCSource
    from ms_gpt2.data.examples import train_pipeline
    from ms_gpt2.models.gpt2 import GPT2ForSummarization, build_config

    source = NLPCCSource.open(five, None, 1.0, 1.0)
    rows = next(train_pipeline(source.lines("train"), tokenizer, 128, 4, summary_only_loss=True)
                .create_dict_iterator(num_epochs=1, output_numpy=True))
    batch = {k: torch.tensor(v.astype(np.int64)) for k, v in rows.items()}
    runtime.seed_everything(0)
    model = GPT2ForSummarization(build_config(tokenizer, 160, 32, 1, 2, 0.0))
    params = tuple(model.parameters())
    grad_fn = autograd.value_and_grad(lambda inputs: model(**inputs)["loss"], params, attach_grads=False)

    def loss_and_grads(inputs):
        loss, grads = grad_fn(inputs)
        return float(loss.asnumpy()), [g.asnumpy().astype(np.float64) for g in grads]

    whole_loss, whole = loss_and_grads(batch)
    shards = [distributed.shard_batch(batch, 2, tokenizer.pad_token_id, r, 2) for r in range(2)]
    assert shards[0].local_tokens != shards[1].local_tokens  # uneven: the weighting matters
    parts = [loss_and_grads(s.inputs) for s in shards]
    weighted = [sum(s.weight * g[i] for s, (_, g) in zip(shards, parts)) for i in range(len(params))]
    averaged = [sum(0.5 * g[i] for _, g in parts) for i in range(len(params))]
    assert sum(s.weight * l for s, (l, _) in zip(shards, parts)) == pytest.approx(whole_loss, rel=1e-6)
    for w, g in zip(weighted, whole):
        np.testing.assert_allclose(w, g, rtol=1e-4, atol=1e-7)
    assert max(np.abs(a - g).max() for a, g in zip(averaged, whole)) > 1e-5


def test_nproc_below_one_is_a_user_error(capsys):
    from ms_gpt2 import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--data", "x.jsonl", "--output-dir", "out", "--nproc", "0"])
    assert exit_.value.code == 2 and "--nproc must be at least 1" in capsys.readouterr().err


def test_a_misspelt_cpu_launch_is_refused_before_msrun_starts(monkeypatch, capsys):
    from ms_gpt2 import cli
    from ms_gpt2.cli import launch

    monkeypatch.setenv("MS_GPT2_CPU_LAUNCH", "threads")
    monkeypatch.setattr(launch, "launch", lambda *a, **k: pytest.fail("msrun was started"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--data", "x.jsonl", "--output-dir", "out", "--nproc", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == ["ms-gpt2: error: MS_GPT2_CPU_LAUNCH='threads': expected one of async, "
                                             "inline"], err


# --------------------------------------------------------------------------------------------------
# Real msrun jobs (2 CPU workers)
# --------------------------------------------------------------------------------------------------

def _train_argv(five, vocab, out, *extra):
    """``ms-gpt2 train`` on the tiny GPT-2 (the argv after ``python -m ms_gpt2``)."""
    sets = [arg for s in TINY for arg in ("--set", s)]
    return ["train", "--device", "cpu", "--seed", "0", "--config", str(REPO / "configs" / "smoke.yaml"), *sets,
            "--tokenizer", str(vocab), "--data", str(five), "--output-dir", str(out), *extra]


def _train_cli(five, vocab, out, *extra, env=None, timeout=300):
    cmd = [sys.executable, "-m", "ms_gpt2", *_train_argv(five, vocab, out, *extra)]
    return subprocess.run(cmd, env=env or _env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _gpt2_opts(accumulation, lam):
    return [f"training.gradient_accumulation_steps={accumulation}", "data.summary_only_loss=null",
            f"data.article_loss_weight={lam}"]


def _gpt2_dp_args(engine, opts):
    """The 2-worker run's options: per-device batch 2 (the one-process run takes 4)."""
    return ["--set", "training.per_device_train_batch_size=2", *[a for o in opts for a in ("--set", o)],
            "--nproc", "2", "--engine", engine]


# BERT (MLM + NSP) on the compiled engine, 10 articles; the per-device batch is added per run
BERT_SETS = ["model.n_positions=48", "model.n_embd=32", "model.n_layer=1", "model.n_head=2", "model.dropout=0.0",
             "data.max_seq_len=48", "pretrain.masking=static", "training.num_train_epochs=2",
             "training.learning_rate=3.0e-3", "training.warmup_steps=2", "training.logging_steps=1",
             "training.save_steps=1000", "training.gradient_accumulation_steps=2"]


def _bert_argv(data, vocab, out, per_device, *extra):
    return ["pretrain", "--objective", "mlm-nsp", "--device", "cpu", "--seed", "0", "--config",
            str(REPO / "configs" / "bert_tiny.yaml"), "--text-field", "article", "--tokenizer", str(vocab),
            "--data", str(data), "--output-dir", str(out), "--engine", "compiled",
            *[a for s in BERT_SETS + [f"training.per_device_train_batch_size={per_device}"] for a in ("--set", s)],
            *extra]


def _write_bert_data(directory):
    data = directory / "articles.jsonl"
    data.write_text("".join(open(DEMO_DATA, encoding="utf-8").readlines()[:10]), encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory):
    return _write_bert_data(tmp_path_factory.mktemp("bert"))


# Each msrun launch costs ~20-30 s before any work (scheduler, two interpreters importing MindSpore,
# joining the group), so one job runs, in each of its two workers: the reduce hook / broadcast checks
# (WORKER), then the command lines below one after the other, exactly as `ms-gpt2 ... --nproc 2` runs
# them in its workers (cli.main under msrun does the work instead of launching). Tests read its runs.
JOB = textwrap.dedent("""
    import json
    import sys
    from ms_gpt2 import cli
    for name, argv in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        print("=== run", name, flush=True)
        code = cli.main(argv)
        assert code == 0, (name, code)
        print("=== end", name, flush=True)
    print("ALL RUNS DONE", rank, flush=True)
""")


class _SharedJob:
    def __init__(self, out, logs, returncode):
        self.out, self.logs, self.returncode = out, logs, returncode

    def log(self, rank):
        return (self.logs / f"worker_{rank}.log").read_text(encoding="utf-8", errors="replace")

    def check(self):
        if self.returncode != 0:
            tails = {p.name: p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob("worker_*.log"))}
            pytest.fail(f"the shared msrun job failed (exit {self.returncode}):\n" + "\n".join(
                f"--- {name}:\n{text}" for name, text in tails.items()))

    def result(self, name):
        """Rank 0's result line of run ``name`` (what `--nproc 2` prints from worker_0.log)."""
        self.check()
        text = self.log(0)
        part = text[text.index(f"=== run {name}\n"):text.index(f"=== end {name}\n")]
        lines = [line for line in part.splitlines() if line.startswith('{"')]
        assert len(lines) == 1, part[-3000:]
        return json.loads(lines[0])


@pytest.fixture(scope="module")
def msrun_job(char_vocab_dir, tmp_path_factory):
    """One 2-worker msrun job whose workers run several data-parallel runs one after the other (each
    msrun launch costs ~20-30 s before any work)."""
    return run_shared_msrun_job(tmp_path_factory, char_vocab_dir)


def run_shared_msrun_job(tmp_path_factory, vocab):
    """The module's one shared msrun job: the eager GPT-2 and BERT runs, and the run with evaluation
    during training (test_eval_during_training's settings). Data: the same files as the
    tests' one-process references read (five, bert_data, eight records)."""
    out = tmp_path_factory.mktemp("msrun_job")
    five, bert_data = _write_five(out), _write_bert_data(out)
    runs = [(f"gpt2-eager-{acc}-{lam}", _train_argv(five, vocab, out / f"gpt2-eager-{acc}-{lam}",
                                                    *_gpt2_dp_args("eager", _gpt2_opts(acc, lam))))
            for acc, lam in ((1, 0.0), (2, 0.5))]
    runs.append(("bert", _bert_argv(bert_data, vocab, out / "bert", 4, "--nproc", "2")))
    eight = write_jsonl(out / "eight.jsonl", eight_records())
    sets = EVAL_TINY + EVAL + ["model.dropout=0.0"]  # the compiled engine (smoke.yaml's)
    runs.append(("eval", ["train", "--device", "cpu", "--seed", "0", "--config", str(REPO / "configs" / "smoke.yaml"),
                          *[a for s in sets for a in ("--set", s)], "--tokenizer", str(vocab), "--data", str(eight),
                          "--output-dir", str(out / "eval"), "--nproc", "2"]))
    (out / "runs.json").write_text(json.dumps(runs), encoding="utf-8")
    (out / "job.py").write_text(WORKER + JOB, encoding="utf-8")
    cmd = launch.msrun_command(2, [str(out / "runs.json")], out / "logs")
    cmd[cmd.index(str(REPO / "ms_gpt2" / "__main__.py"))] = str(out / "job.py")
    done = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    return _SharedJob(out, out / "logs", done.returncode)


@pytest.mark.parametrize("engine,accumulation,lam", [("compiled", 1, 0.5), ("eager", 1, 0.0), ("eager", 2, 0.5)])
def test_two_msrun_workers_train_exactly_like_one_process_with_the_doubled_batch(engine, accumulation, lam, five,
                                                                                 char_vocab_dir, tmp_path, msrun_job):
    """At the default adam_epsilon (1e-8) and, at λ = 0.5, with the loss_weights column through the
    shard weighting (a float count: it was int()ed, which this caught). Tolerances below.

    The compiled case runs ``train --nproc 2`` (ms_gpt2's own msrun launch, its result line and its
    msrun_logs); the eager cases run the same ``train`` command line in the workers of the session's
    one shared msrun job (conftest.py's ``msrun_job``), which saves a launch each."""
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.train import train

    opts = _gpt2_opts(accumulation, lam)
    steps = 4 // accumulation  # 2 epochs of the global batches [4 rows, 1 row]
    if engine == "compiled":
        dp_dir = tmp_path / "dp"
        done = _train_cli(five, char_vocab_dir, dp_dir, *_gpt2_dp_args(engine, opts))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])  # rank 0's result line
        logs = dp_dir / "msrun_logs"
    else:
        dp_dir = msrun_job.out / f"gpt2-{engine}-{accumulation}-{lam}"
        result = msrun_job.result(dp_dir.name)
        logs = msrun_job.logs
    assert result["global_step"] == steps

    config = load_config(REPO / "configs" / "smoke.yaml", TINY + [f"tokenizer.path={char_vocab_dir}",
                                                                  "training.per_device_train_batch_size=4"] + opts)
    config["engine"] = engine
    one = train(config, five, tmp_path / "one")
    assert one.global_step == steps

    def log(run):
        return [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]

    dp, single = log(dp_dir), log(tmp_path / "one")
    assert [e["step"] for e in dp] == [e["step"] for e in single] == list(range(1, steps + 1))  # one writer
    for a, b in zip(dp, single):
        # HF rounds logged losses to 4 decimals (abs_tol). The grad norm is not rounded and is a
        # function of the whole reduced gradient: at step 1 (same weights) it tests the reduction
        # alone, within 1e-5; later steps start from weights that already differ by up to ~5e-6
        # (the AdamW rounding amplification below), which moves the norm by up to ~3e-5 (seen 2.2e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5 if a["step"] == 1 else 1e-4)
    # Weights. Two processes sum each gradient in another order than one, so an element whose true
    # gradient is ~0 holds float rounding (~1e-9) of either sign, and AdamW divides it by its own
    # size (+ eps = 1e-8): such elements move by up to ~lr a step in either run, in directions that
    # may differ. Every other element agrees to 1e-5. So: at most 0.5% of the elements beyond 1e-5
    # (seen: 0 on two of the cases, 69 of 53088 = 0.13% on eager λ=0, largest 7.1e-4), and every
    # element within Adam's bound of 2 * lr per step (lr = 5e-3). A wrong reduction shows at step 1's
    # loss and grad norm above, at 1e-5.
    loose = 2 * 5e-3 * steps
    for name in ("model/model.safetensors", "checkpoint-2/model.safetensors"):
        got, want = load_file(str(dp_dir / name)), load_file(str(tmp_path / "one" / name))
        assert got.keys() == want.keys()
        off = sum(int((np.abs(got[k] - want[k]) > 1e-5 + 1e-5 * np.abs(want[k])).sum()) for k in want)
        total = sum(v.size for v in want.values())
        print(f"{name}: {off} of {total} elements differ by more than 1e-5; largest "
              f"{max(float(np.abs(got[k] - want[k]).max()) for k in want):.2e}")
        assert off <= total * 5e-3, f"{name}: {off} of {total} weights differ by more than 1e-5"
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=loose, err_msg=f"{name}:{key}")

    # the same files as one process wrote, plus msrun's logs (the shared job keeps its logs beside the
    # runs); rank 1 left nothing behind
    names = lambda run: sorted(p.name for p in run.iterdir())  # noqa: E731
    assert names(dp_dir) == sorted(names(tmp_path / "one") + (["msrun_logs"] if engine == "compiled" else []))
    assert sorted(p.name for p in logs.glob("worker_*.log")) == ["worker_0.log", "worker_1.log"]


def test_bert_msrun_workers_pretrain_like_one_process_with_the_doubled_batch(char_vocab_dir, bert_data, tmp_path,
                                                                            msrun_job):
    """BERT (MLM + NSP) on the compiled engine: 2 workers x 4 rows = 1 process x 8 rows, including the
    epoch's short last batch (7 rows: 4 + 3, so the ranks' shares differ) and gradient accumulation
    2 (the last group one micro-batch). Each rank divides its MLM and NSP loss sums by the global
    micro-batch's counts (graphs/bert.py BertGraph.shard). Tolerances as above. The 2-worker run is
    the shared job's; the one-process run runs here."""
    from safetensors.numpy import load_file

    from ms_gpt2 import cli

    def log(out):
        return [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]

    msrun_job.check()
    assert cli.main(_bert_argv(bert_data, char_vocab_dir, tmp_path / "one", 8)) == 0
    dp_dir = msrun_job.out / "bert"
    dp, one = log(dp_dir), log(tmp_path / "one")
    assert [e["step"] for e in dp] == [e["step"] for e in one] == [1, 2, 3, 4]   # 3 batches an epoch, 2 per step
    for a, b in zip(dp, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5 if a["step"] == 1 else 1e-4)
    got, want = (load_file(str(r / "model" / "model.safetensors")) for r in (dp_dir, tmp_path / "one"))
    assert got.keys() == want.keys()
    off = sum(int((np.abs(got[k] - want[k]) > 1e-5 + 1e-5 * np.abs(want[k])).sum()) for k in want)
    assert off <= sum(v.size for v in want.values()) * 5e-3
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=2 * 3e-3 * 4, err_msg=key)


def test_a_failing_worker_ends_the_job_with_its_error(five, char_vocab_dir, tmp_path):
    env = _env()
    env[distributed.FAIL_RANK_ENV] = "1"  # rank 1 raises; rank 0 is waiting for it in the first all-reduce
    env["MS_NODE_TIMEOUT"] = "6"  # msrun's scheduler notices the killed rank 0 after 6 s, not ~30 s
    done = _train_cli(five, char_vocab_dir, tmp_path / "dp", "--nproc", "2", env=env, timeout=240)
    assert done.returncode != 0
    assert "worker_1.log" in done.stderr and "rank 1 failed on purpose" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "dp" / "model").exists()


WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import mindspore
    from ms_gpt2.infra import runtime
    rt = runtime.setup("cpu", seed=0)
    from ms_gpt2.engine import distributed
    import torch
    rank, size = distributed.world()
    assert (rank, size) == (rt.rank, 2), (rank, size)

    reduce = distributed.AllReduceSum()
    @mindspore.jit
    def step(loss_sum, count, g1, g2):
        return reduce(loss_sum, count, (g1, g2))
    t = lambda *v: mindspore.Tensor(np.array(v, np.float32))
    loss, count, (g1, g2) = step(t(1.0 + rank), t(3.0 * (rank + 1)), t(rank, 1.0), t(10.0 * rank))
    assert loss.asnumpy().tolist() == [3.0] and count.asnumpy().tolist() == [9.0], (loss, count)
    assert g1.asnumpy().tolist() == [1.0, 2.0] and g2.asnumpy().tolist() == [10.0], (g1, g2)

    p = torch.nn.Parameter(torch.tensor([float(rank + 5), -1.0 * rank]))
    distributed.broadcast_parameters([p])
    assert p.detach().numpy().tolist() == [5.0, 0.0], p
    print("OK", rank, flush=True)
""")


def test_reduce_hook_sums_inside_jit_and_broadcast_copies_rank_0(msrun_job):
    """WORKER's checks ran first in each worker of the shared job."""
    msrun_job.check()
    assert "OK 0" in msrun_job.log(0) and "OK 1" in msrun_job.log(1)


def test_each_rank_draws_its_own_dropout_masks(monkeypatch):
    """Compiled data parallel: the keep-masks are keyed on (seed, step), so without a per-rank
    stream every rank would drop the same positions of its rows. Rank 0 keeps the one-process one."""
    from types import SimpleNamespace

    from ms_gpt2.models.graphs.gpt2 import GPT2GraphConfig, dropout_masks

    class Base:
        def _build_engine(self):
            return SimpleNamespace(seed=7)

    class Trainer(distributed.CompiledDataParallelMixin, Base):
        pass

    seeds = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, 2))
        seeds.append(Trainer()._build_engine().seed)
    assert seeds[0] == 7 and seeds[1] != 7
    for source in ("host", "device"):  # masks drawn by NumPy, or the key the graph hashes them from
        cfg = GPT2GraphConfig(n_layer=1, n_head=2, layer_norm_epsilon=1e-5, pad_token_id=0, dropout=0.1,
                              dropout_source=source)
        a, b = (dropout_masks(cfg, seed, 3, 2, 8, 16) for seed in seeds)
        assert not np.array_equal(a[0].asnumpy(), b[0].asnumpy())


def test_two_msrun_workers_evaluate_like_one_process_and_keep_the_best(tmp_path, char_vocab_dir, msrun_job):
    """Every rank scores the whole held-out split (no collective call: no rank waits); rank 0 logs it and
    keeps the best checkpoint. Equal to one process with the doubled batch (weights agree to ~1e-5).
    The 2-worker run (`train ... --nproc 2` on test_eval_during_training's settings) is this module's
    shared msrun job's."""
    from ms_gpt2.infra.config import load_config
    from ms_gpt2.jobs.train import train

    data = write_jsonl(tmp_path / "eight.jsonl", eight_records())
    sets = EVAL_TINY + EVAL + ["model.dropout=0.0"]  # the compiled engine (smoke.yaml's)
    dp_dir = msrun_job.out / "eval"
    assert msrun_job.result("eval")["global_step"] == 4

    config = load_config("configs/smoke.yaml", sets + [f"tokenizer.path={char_vocab_dir}",
                                                       "training.per_device_train_batch_size=4"])
    runtime.setup("cpu", seed=0)
    train(config, data, tmp_path / "one")
    dp, one = ({e["step"]: e["eval_loss"] for e in entries(run) if "eval_loss" in e}
               for run in (dp_dir, tmp_path / "one"))
    assert sorted(dp) == sorted(one) == [2, 4]  # 6 records, global batch 2 x 2: 2 steps an epoch, 2 epochs
    for step in dp:
        assert dp[step] == pytest.approx(one[step], rel=1e-5)
    state = json.loads((dp_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(dp_dir / "checkpoint-2")
    final = load_file(str(dp_dir / "model" / "model.safetensors"))
    for name, value in load_file(str(dp_dir / "checkpoint-2" / "model.safetensors")).items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)
