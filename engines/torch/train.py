"""The torch engine's trainer: one process of a torchrun job (launch.py starts it; the train stage starts launch.py).

    python engines/torch/launch.py [torchrun flags] engines/torch/train.py JOB.json

JOB.json is written by the train stage (lib/train/torch_engine.ts) from a
config it has already validated: model dir, masked train/eval JSONL, output
dir, the adapter, the finetune_demo `training_args` the engine honours,
and an initial adapter or a checkpoint to resume. This process trains with HF
Trainer (DDP, FSDP or DeepSpeed as the arguments say), with the project's own
rules where they differ from Trainer's defaults:

  * the record order is the WebGPU engine's (data.py), with or without shuffling;
  * the loss of a micro-step is the mean over the non-ignored tokens of all
    processes' records — each process scales its token sum by
    world_size / (tokens in all processes), and DDP/FSDP/DeepSpeed average the
    gradients — so W processes of batch b give the same losses and updates as
    one process of batch W·b; micro-steps of an accumulation window weigh the
    same (Trainer divides by their number);
  * log entries, metrics.jsonl, the progress line, checkpoints and the final
    outputs are the WebGPU engine's (checkpoint.py), so later stages and either
    engine's --resume read them.

Exit codes: 0 done, 3 a problem the printed line explains, 130 interrupted
(a checkpoint was saved).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

USER_ERROR = 3
INTERRUPTED = 130
SETUP_HINT = (
    "run `deno task setup-torch` (or set GLM_TORCH_PYTHON to a Python that has torch, transformers, peft and "
    "accelerate)"
)


class JobError(Exception):
    """Bad input or setup; the message is all the user needs."""


def fail(msg: str) -> None:
    """Say what is wrong in one line and exit 3. Under the train stage the line goes to the file it names
    (GLM_TORCH_ERROR_FILE), and the stage reports it as its own error, once."""
    to = os.environ.get("GLM_TORCH_ERROR_FILE")
    if to:
        with open(to, "a", encoding="utf-8") as f:
            f.write(msg + "\n")
    else:
        print(f"train (torch): {msg}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        fail("usage: train.py JOB.json (the train stage writes it; run `deno task stage train --engine torch`)")
    try:
        import accelerate  # noqa: F401
        import peft  # noqa: F401
        import safetensors  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        fail(f"{e.name} is not installed for {sys.executable}: {SETUP_HINT}")
    from chatglm import ModelDirError
    from checkpoint import CheckpointError

    with open(argv[1], encoding="utf-8") as f:
        job = json.load(f)
    try:
        code = run(job)
    except (JobError, ModelDirError, CheckpointError) as e:
        fail(str(e))
    if code == 0:
        close_process_group()
    sys.exit(code)


def close_process_group() -> None:
    """Every process done, then the process group taken down before exit: left to the interpreter's
    teardown, gloo's threads were sometimes destroyed while running ("terminate called without an
    active exception", the process aborted after a finished run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---- what the job asks for, in HF TrainingArguments terms ----


def _deepspeed_available() -> bool:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return False
    return True


def training_arguments(job: dict) -> tuple[dict, list[str]]:
    """TrainingArguments kwargs for the job, and notes for the user (one line each)."""
    import torch
    import transformers
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    ta = job["training_args"]
    notes = []
    # Keys the toolkit handles itself are dropped quietly; a torch-only key the config sets is worth a note.
    unknown = sorted(k for k in job.get("torch_keys", []) if k not in fields)
    if unknown:
        notes.append(f"note: transformers {transformers.__version__} has no {', '.join(unknown)}; ignored")
    kw = {k: v for k, v in ta.items() if k in fields}
    kw.update(
        output_dir=job["out_dir"],
        # The engine writes its own checkpoints and logs (checkpoint.py, the progress line).
        disable_tqdm=True,
        prediction_loss_only=True,
        remove_unused_columns=False,
        label_names=["labels"],
        max_grad_norm=ta.get("max_grad_norm") or 0.0,
        report_to=ta.get("report_to") or "none",
        use_cpu=ta.get("use_cpu", False) or not torch.cuda.is_available(),
        # Every trainable tensor takes part in every step (LoRA, prefix, full); DDP need not search.
        ddp_find_unused_parameters=ta.get("ddp_find_unused_parameters") or False,
    )
    if not job.get("eval_file"):
        kw["eval_strategy"] = "no"
        kw["do_eval"] = False
    if ta.get("deepspeed"):
        deepspeed_or_fsdp(kw, ta["deepspeed"], notes)
    if kw.get("fsdp"):
        fc = dict(kw.get("fsdp_config") or {})
        # GLMBlock is the unit each process gathers and frees (as DeepSpeed ZeRO-3 does per module).
        fc.setdefault("transformer_layer_cls_to_wrap", ["GLMBlock"])
        kw["fsdp_config"] = fc
    return kw, notes


def deepspeed_or_fsdp(kw: dict, path: str, notes: list[str]) -> None:
    """A DeepSpeed config: DeepSpeed where it is installed; otherwise FSDP with the same sharding
    (FSDP2's reshard_after_forward: FULL_SHARD is ZeRO-3, SHARD_GRAD_OP ZeRO-2), said in one line."""
    import torch

    with open(path, encoding="utf-8") as f:
        ds = json.load(f)
    for prec in ("bf16", "fp16"):
        if (ds.get(prec) or {}).get("enabled") is True:  # "auto" follows training_args
            kw[prec] = True
    if _deepspeed_available():
        kw["deepspeed"] = path
        return
    kw.pop("deepspeed", None)
    zero = ds.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))
    head = f"note: deepspeed is not installed: {os.path.basename(path)} (ZeRO stage {stage})"
    if kw.get("fsdp"):
        notes.append(f"{head} is left out; the config's fsdp setting runs")
        return
    if stage < 2:
        notes.append(f"{head} runs as plain data parallel")
        return
    fc = dict(kw.get("fsdp_config") or {})
    fc.setdefault("reshard_after_forward", stage == 3)
    offload = any((zero.get(k) or {}).get("device") in ("cpu", "nvme") for k in ("offload_param", "offload_optimizer"))
    if offload and torch.cuda.is_available():
        fc.setdefault("cpu_offload", True)
    kw["fsdp"] = True
    kw["fsdp_config"] = fc
    mode = "FULL_SHARD" if stage == 3 else "SHARD_GRAD_OP"
    notes.append(f"{head} runs as PyTorch FSDP {mode}{' with CPU offload' if fc.get('cpu_offload') else ''}, "
                 "its equivalent")


def saved_name(param_name: str) -> str:
    """A trainable parameter's name in the files: PEFT's adapter name dropped
    (lora_A.default.weight → lora_A.weight)."""
    return re.sub(r"\.(lora_[AB])\.default\.", r".\1.", param_name)


def checkpoint_dtype(model_dir: str):
    """The dtype config.json says the weights are stored in (chatglm3-6b: float16), f32 if it says nothing."""
    import torch

    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            name = json.load(f).get("torch_dtype")
    except (OSError, ValueError):
        name = None
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(name, torch.float32)


def build_model(job: dict, args):
    """The model with its adapter; trainable tensors in f32.

    Frozen base weights (LoRA, P-Tuning v2) are held in bf16 / fp16 when that is the
    precision; with neither, on a GPU, in the dtype the checkpoint is stored in
    (chatglm3-6b: float16), which is how upstream's finetune_hf.py trains them (it casts
    only the trainable tensors to f32); on the CPU in f32. FSDP and DeepSpeed get one dtype,
    f32, and keep their own low-precision copies."""
    import torch
    from chatglm import load_model

    a = job["adapter"]
    sharded = bool(args.fsdp) or bool(args.deepspeed)
    half = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    if a["kind"] == "full" or sharded:
        base_dtype = torch.float32
    elif half is not None:
        base_dtype = half
    elif torch.cuda.is_available() and not args.use_cpu:
        base_dtype = checkpoint_dtype(job["model_dir"])
    else:
        base_dtype = torch.float32
    model = load_model(
        job["model_dir"],
        pre_seq_len=a["pre_seq_len"] if a["kind"] == "prefix" else None,
        prefix_projection=a.get("prefix_projection", False),
        prefix_hidden_size=a.get("hidden_size"),
        base_dtype=base_dtype,
    )
    model.transformer.set_attention(job.get("attention", "sdpa"))
    if a["kind"] == "lora":
        from peft import LoraConfig, get_peft_model

        model.name_or_path = job["model_dir"]
        model = get_peft_model(
            model,
            LoraConfig(
                task_type="CAUSAL_LM",
                r=a["r"],
                lora_alpha=a["alpha"],
                lora_dropout=a["dropout"],
                target_modules=a["target_modules"],
                use_rslora=a.get("use_rslora", False),
                bias="none",
            ),
        )
    elif a["kind"] == "prefix":
        model.transformer.prefix_dropout.p = a["dropout"]
    return model


def trainable(model) -> dict:
    """Saved name → parameter, in the model's order."""
    return {saved_name(n): p for n, p in model.named_parameters() if p.requires_grad}


def set_trainables(model, tensors: dict, where: str) -> None:
    """Copy tensors (saved names) into the model's trainable parameters; every one must be there, shapes equal."""
    import torch
    from checkpoint import CheckpointError

    params = trainable(model)
    for name, p in params.items():
        t = tensors.get(name)
        if t is None:
            raise CheckpointError(f"{where}: tensor {name} is missing")
        if t.numel() != p.numel():
            raise CheckpointError(f"{where}: {name} has {t.numel()} values, the model's has {p.numel()}")
        with torch.no_grad():
            p.copy_(t.reshape(p.shape).to(p.dtype))
    extra = sorted(set(tensors) - set(params))
    if extra:
        raise CheckpointError(f"{where}: tensor {extra[0]} does not belong to the model being trained")


# ---- the progress line (lib/train/progress.ts, restated) ----


def format_duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = round(s)
    h, m, sec = s // 3600, (s % 3600) // 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h > 0 else f"{m}:{sec:02d}"


class Progress:
    """A status line on stderr: rewritten in place on a terminal, one line per log otherwise."""

    def __init__(self, total: int):
        self.total = total
        # Under the train stage stderr is the terminal itself; the stage says whether it is one.
        tty = os.environ.get("GLM_PROGRESS_TTY")
        self.tty = tty == "1" if tty is not None else sys.stderr.isatty()
        self.shown = ""
        self.last = ""

    def _write(self, s: str) -> None:
        sys.stderr.write(s)
        sys.stderr.flush()

    def update(self, text: str) -> None:
        if self.tty:
            self._write(f"\r\x1b[2K{text}")
            self.shown = text
        else:
            self._write(text + "\n")

    def note(self, text: str) -> None:
        self._write(f"\r\x1b[2K{text}\n{self.shown}" if self.tty else f"{text}\n")

    def tick(self, step: int) -> None:
        if self.tty:
            self.update(f"{self.last + ' | ' if self.last else ''}step {step}/{self.total}")

    def log(self, step, loss, lr, grad_norm, tokens_per_s, eta_s) -> None:
        self.last = (
            f"step {step}/{self.total}  loss {loss:.4f}  lr {_js_exp(lr)}  grad_norm {grad_norm:.4f}  "
            f"{tokens_per_s:.0f} tok/s  ETA {format_duration(eta_s)}"
        )
        self.update(self.last)

    def end(self) -> None:
        if self.tty and self.shown:
            self._write("\n")
        self.shown = ""


def _js_exp(x: float) -> str:
    """JavaScript's toExponential(3) (no zero padding of the exponent), for the same progress line."""
    m, e = f"{x:.3e}".split("e")
    return f"{m}e{'+' if int(e) >= 0 else '-'}{abs(int(e))}"


# ---- the trainer ----


def make_trainer_class():
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from transformers import PrinterCallback, Trainer, TrainerCallback

    import checkpoint as ck

    def dist_on() -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    class Hooks(TrainerCallback):
        """Restores the logging window on resume, ticks the progress line, stops on Ctrl-C."""

        def __init__(self, trainer):
            self.t = trainer

        def on_train_begin(self, args, state, control, **kw):
            t = self.t
            w = t.job.get("resume_window")
            if w and w.get("steps", 0) > 0:
                # Trainer restarts its loss sum at a resume; carry the half-filled logging window over,
                # so the first log after a resume averages the same steps as an uninterrupted run.
                t._tr_loss += w["lossSum"]
                t._globalstep_last_logged = state.global_step - w["steps"]
            total = t.job.get("resume_loss_total")
            if total:
                # Trainer restarts the sum behind train_loss at a resume too, yet divides it by every
                # step: it starts from the steps before the carried window instead, as an uninterrupted run.
                t._total_loss_scalar = total["lossSum"] - (w["lossSum"] if w else 0.0)
            t._run_start = time.time()
            t._window_start = time.time()
            t._steps_at_start = state.global_step
            if t.progress:
                t.progress.total = state.max_steps
            if t.progress and state.global_step > 0:
                t.progress.note(f"resuming at step {state.global_step}/{state.max_steps}")

        def on_step_end(self, args, state, control, **kw):
            t = self.t
            stop = torch.tensor([1.0 if t.stop_requested else 0.0], device=args.device)
            if dist_on():
                dist.all_reduce(stop)
            # Stopped at the last step, the run is complete: it finishes (summary, final save), as the
            # WebGPU engine does, rather than leaving a resume with nothing to do.
            if stop.item() > 0 and not t.interrupted and state.global_step < state.max_steps:
                t.interrupted = True
                control.should_save = True
                control.should_training_stop = True
            if t.progress and not control.should_log:
                t.progress.tick(state.global_step)
            return control

    class GlmTrainer(Trainer):
        def __init__(self, *a, job, sampler, rank, **kw):
            super().__init__(*a, **kw)
            self.job = job
            self.sampler = sampler
            self.rank = rank
            # compute_loss normalises by tokens itself; Trainer must not pass num_items_in_batch.
            self.model_accepts_loss_kwargs = False
            self.progress = Progress(0) if rank == 0 else None
            self.metrics_file = None
            self.stop_requested = False
            self.interrupted = False
            self._tokens = 0
            self._run_start = self._window_start = time.time()
            self._steps_at_start = 0
            self.add_callback(Hooks(self))
            # Trainer prints each log dict when tqdm is off; the progress line says it instead.
            self.remove_callback(PrinterCallback)

        # -- data --
        def _get_train_sampler(self, train_dataset=None):
            return self.sampler

        def _run_epoch(self, *a, **kw):
            self.sampler.set_epoch(kw["epoch"])
            return super()._run_epoch(*a, **kw)

        # -- loss --
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, labels = inputs["input_ids"], inputs["labels"]
            out = model(input_ids=ids)
            logits = out["logits"]
            target = labels[:, 1:]
            total = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                target.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            n = (target != -100).sum()
            if model.training:
                self._tokens = self._tokens + (ids != 0).sum()  # read at the next log (no sync here)
                if dist_on():
                    n_all = n.clone()
                    dist.all_reduce(n_all)
                    loss = total * dist.get_world_size() / n_all.clamp(min=1)
                else:
                    loss = total / n.clamp(min=1)
            else:
                loss = total / n.clamp(min=1)
            return (loss, out) if return_outputs else loss

        # -- logs --
        def log(self, logs, start_time=None):
            s = self.state
            epoch = s.epoch if s.epoch is not None else 0
            if "loss" in logs:
                entry = {"loss": logs["loss"], "grad_norm": logs.get("grad_norm"),
                         "learning_rate": logs.get("learning_rate"), "epoch": epoch, "step": s.global_step}
                if isinstance(entry["grad_norm"], torch.Tensor):
                    entry["grad_norm"] = entry["grad_norm"].item()
                tokens = torch.tensor([float(self._tokens)], device=self.args.device)  # this process's, then all
                if dist_on():
                    dist.all_reduce(tokens)
                self._tokens = 0
                now = time.time()
                if self.progress:
                    done = max(1, s.global_step - self._steps_at_start)
                    self.progress.log(
                        s.global_step, entry["loss"], entry["learning_rate"] or 0.0, entry["grad_norm"] or 0.0,
                        tokens.item() / max(now - self._window_start, 1e-9),
                        (now - self._run_start) / done * (s.max_steps - s.global_step),
                    )
                self._window_start = now
            elif "eval_loss" in logs:
                entry = {"eval_loss": logs["eval_loss"], "epoch": epoch, "step": s.global_step}
                if self.progress:
                    self.progress.note(f"step {s.global_step}/{s.max_steps}  eval_loss {logs['eval_loss']:.4f}")
            elif "train_runtime" in logs:
                done = s.global_step - self._steps_at_start
                if self.interrupted or done <= 0:
                    entry = None
                else:
                    runtime = time.time() - self._run_start
                    # Trainer's train_loss: every step's loss over every step (the sum carried over a
                    # resume, on_train_begin), whatever was logged.
                    entry = {"epoch": epoch, "step": s.global_step, "train_runtime": runtime,
                             "train_steps_per_second": done / max(runtime, 1e-9),
                             "train_loss": logs["train_loss"]}
            else:
                entry = {**logs, "epoch": epoch, "step": s.global_step}
            if entry is not None:
                # JSON has no NaN: a loss that is not a number is written as null, as JSON.stringify does.
                entry = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in entry.items()}
                s.log_history.append(entry)
                if self.metrics_file:
                    self.metrics_file.write(json.dumps(entry, separators=(",", ":")) + "\n")
                    self.metrics_file.flush()
            # report_to integrations (tensorboard, wandb, ...) get Trainer's own dict.
            self.control = self.callback_handler.on_log(self.args, s, self.control, logs)

        # -- state of the whole run, gathered to rank 0 --
        def _gather(self, with_moments: bool):
            """Saved name → full f32 tensor (rank 0; {} elsewhere), and the AdamW moments if asked."""
            model = self.model_wrapped
            names = {n: saved_name(n) for n, p in self._unwrapped().named_parameters() if p.requires_grad}
            if self.is_deepspeed_enabled:
                return self._gather_deepspeed(names), {}
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
            sd = get_model_state_dict(model, options=opts)
            params = {names.get(k, saved_name(k)): v.detach().float().cpu() for k, v in sd.items()}
            moments = {}
            if with_moments:
                osd = get_optimizer_state_dict(model, self._inner_optimizer(), options=opts)
                for k, st in osd.get("state", {}).items():
                    if "exp_avg" in st:
                        m, v = st["exp_avg"].float().cpu(), st["exp_avg_sq"].float().cpu()
                        moments[names.get(k, saved_name(k))] = (m, v)
                for name, t in params.items():
                    moments.setdefault(name, (torch.zeros_like(t), torch.zeros_like(t)))
            return (params, moments) if self.rank == 0 else ({}, {})

        def _gather_deepspeed(self, names):
            import deepspeed

            out = {}
            for n, p in self._unwrapped().named_parameters():
                if n in names:
                    with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                        if self.rank == 0:
                            out[names[n]] = p.detach().float().cpu().clone()
            return out

        def _unwrapped(self):
            return self.accelerator.unwrap_model(self.model_wrapped)

        def _inner_optimizer(self):
            return getattr(self.optimizer, "optimizer", self.optimizer)

        def _window(self):
            total = self._tr_loss.detach().clone().float().reshape(1)
            if dist_on():
                dist.all_reduce(total)
                total /= dist.get_world_size()
            steps = self.state.global_step - self._globalstep_last_logged
            return {"lossSum": total.item(), "steps": steps, "skipped": 0}

        def _save_checkpoint(self, model, trial):
            job, s = self.job, self.state
            step = s.global_step
            # save_only_model's checkpoints cannot be resumed; the one an interrupt saves is for resuming
            with_moments = not self.args.save_only_model or self.interrupted
            params, moments = self._gather(with_moments=with_moments)
            window = self._window()
            rngs = [None] * (dist.get_world_size() if dist_on() else 1)
            if dist_on():
                dist.all_gather_object(rngs, ck.rng_tensors())
            else:
                rngs[0] = ck.rng_tensors()
            target = os.path.join(job["out_dir"], f"checkpoint-{step}")
            ds_dir = None
            if self.is_deepspeed_enabled and with_moments:
                # DeepSpeed's partitioned optimizer state can only be written by DeepSpeed itself (every
                # process its part); its global_stepN/ and `latest` go into the checkpoint beside our files.
                ds_dir = os.path.join(job["out_dir"], f".checkpoint-{step}.deepspeed.tmp")
                self.model_wrapped.save_checkpoint(ds_dir)
                if dist_on():
                    dist.barrier()
            if self.rank == 0:
                lr_next = self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler else 0.0

                def fill(d):
                    # (a PEFT model's config is its base model's)
                    ck.write_trainables(d, job, params, self._unwrapped().config)
                    if moments:
                        ck.write_moments(os.path.join(d, "optimizer.safetensors"), moments)
                    if ds_dir:
                        for name in os.listdir(ds_dir):
                            os.replace(os.path.join(ds_dir, name), os.path.join(d, name))
                        os.rmdir(ds_dir)
                    kind = getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)
                    ck.write_json_atomic(os.path.join(d, "scheduler.json"),
                                         ck.scheduler_json(kind, self.args.learning_rate, step, float(lr_next)))
                    ck.write_json_atomic(os.path.join(d, "rng_state.json"),
                                         ck.rng_json(job["data_info"]["seed"], job["data_info"]["shuffle"], step))
                    for r, t in enumerate(rngs):
                        ck.save_tensors_atomic(os.path.join(d, f"rng_state_{r}.safetensors"), t)
                    ck.write_json_atomic(os.path.join(d, "resume_state.json"), {
                        "global_step": step,
                        "epoch": s.epoch,
                        "max_steps": s.max_steps,
                        "logging_window": window,
                        # every step's loss so far (HF's train_loss sums them), carried over a resume
                        "loss_total": {"lossSum": self._total_loss_scalar + window["lossSum"], "steps": step},
                        "last_logged_step": self._globalstep_last_logged,
                        "data": job["data_info"],
                    })
                    self._write_state_files(d)
                    ck.mark_complete(d, step)

                ck.write_dir_atomic(target, fill)
                if self.args.save_total_limit:
                    ck.rotate_checkpoints(job["out_dir"], self.args.save_total_limit)
            if dist_on():
                dist.barrier()
            self.last_checkpoint = target

        def _write_state_files(self, d):
            # HF's trainer_state.json (its save_to_json's format), written atomically.
            state = json.dumps(dataclasses.asdict(self.state), indent=2, sort_keys=True) + "\n"
            ck.write_bytes_atomic(os.path.join(d, "trainer_state.json"), state.encode())
            echo = {**self.job["training_args"], **self.job["config_echo"]}
            ck.write_json_atomic(os.path.join(d, "training_args.json"), echo)

        # -- resume: tensors were set before wrapping (main); here the moments, the schedule, the generators --
        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            return

        def _load_optimizer_and_scheduler(self, checkpoint):
            if checkpoint is None:
                return
            if self.is_deepspeed_enabled:
                # DeepSpeed restored its optimizer state from the checkpoint's global_stepN/ already
                # (Trainer calls deepspeed_load_checkpoint); a schedule Trainer made is replayed.
                if type(self.lr_scheduler).__name__ != "DeepSpeedSchedulerWrapper":
                    self._replay_schedule(self.state.global_step)
                return
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
                set_optimizer_state_dict,
            )

            moments = ck.read_moments(os.path.join(checkpoint, "optimizer.safetensors"))
            step = self.state.global_step
            model, opt = self.model_wrapped, self._inner_optimizer()
            # Adam's lazily created state is filled in from the file, keyed as the optimizer keys it.
            template = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
            names = {n: saved_name(n) for n, p in self._unwrapped().named_parameters() if p.requires_grad}
            shapes = {saved_name(n): p for n, p in self._unwrapped().named_parameters() if p.requires_grad}
            state = {}
            for group in template["param_groups"]:
                for fqn in group["params"]:
                    name = names.get(fqn, saved_name(fqn))
                    if name not in moments:
                        raise ck.CheckpointError(f"{checkpoint}/optimizer.safetensors: no moments for {name}")
                    m, v = moments[name]
                    shape = shapes[name].shape if name in shapes else m.shape
                    if m.numel() != math.prod(shape):
                        raise ck.CheckpointError(f"{checkpoint}/optimizer.safetensors: {name} has the wrong size")
                    state[fqn] = {"step": torch.tensor(float(step)), "exp_avg": m.reshape(shape),
                                  "exp_avg_sq": v.reshape(shape)}
            set_optimizer_state_dict(model, opt, {"state": state, "param_groups": template["param_groups"]},
                                     options=StateDictOptions(full_state_dict=True))
            self._replay_schedule(step)

        def _replay_schedule(self, step):
            """The schedule is a function of the step: step it to where the checkpoint was."""
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
                for _ in range(step):
                    self.lr_scheduler.step()

        def _load_rng_state(self, checkpoint):
            if checkpoint is None:
                return
            path = os.path.join(checkpoint, f"rng_state_{self.rank}.safetensors")
            if os.path.exists(path):
                ck.set_rng_tensors(ck.read_tensors(path))

        def _load_scaler(self, checkpoint):
            return

    return GlmTrainer


def run(job: dict) -> int:
    import torch
    import transformers
    from transformers import TrainingArguments

    import checkpoint as ck
    from data import EpochSampler, MaskedJsonl, collate

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))

    kw, notes = training_arguments(job)
    if rank == 0:
        for n in notes:
            print(n, file=sys.stderr, flush=True)
    try:
        args = TrainingArguments(**kw)
    except (ValueError, ImportError) as e:
        raise JobError(f"training_args: {e}") from None
    transformers.set_seed(args.seed)

    model = build_model(job, args)
    if job.get("init_file"):
        set_trainables(model, ck.read_tensors(job["init_file"]), job.get("init_source", job["init_file"]))
    resume = job.get("resume_dir")
    if resume:
        set_trainables(model, ck.read_trainables(resume, job["adapter"]["kind"]), resume)

    train_ds = MaskedJsonl(job["train_file"])
    eval_ds = MaskedJsonl(job["eval_file"]) if job.get("eval_file") else None
    sampler = EpochSampler(len(train_ds), job["data_info"]["seed"], job["data_info"]["shuffle"])
    GlmTrainer = make_trainer_class()
    try:
        trainer = GlmTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             data_collator=collate, job=job, sampler=sampler, rank=rank)
    except (ValueError, ImportError, RuntimeError) as e:
        # A setting Trainer cannot honour here, e.g. report_to a tracker that is not installed.
        raise JobError(f"training_args: {e} (in {sys.executable}'s environment)") from None

    def on_sigint(signum, frame):
        if not trainer.stop_requested and trainer.progress:
            trainer.progress.note("interrupt: finishing the current step, then saving a checkpoint")
        trainer.stop_requested = True

    signal.signal(signal.SIGINT, on_sigint)
    if rank == 0:
        os.makedirs(job["out_dir"], exist_ok=True)
        # Rewritten from the restored history on resume, then appended (as the WebGPU engine does).
        # The history goes into a new file renamed over the old one: the TensorBoard follower
        # (lib/train/follow_metrics.ts) tells an earlier run's file from this one by its inode.
        history = []
        if resume:
            with open(os.path.join(resume, "trainer_state.json"), encoding="utf-8") as f:
                history = json.load(f).get("log_history", [])
        metrics_path = os.path.join(job["out_dir"], "metrics.jsonl")
        fresh = os.path.join(job["out_dir"], f".metrics.jsonl.{os.getpid()}.tmp")
        trainer.metrics_file = open(fresh, "w", encoding="utf-8")
        for e in history:
            trainer.metrics_file.write(json.dumps(e, separators=(",", ":")) + "\n")
        trainer.metrics_file.flush()
        os.replace(fresh, metrics_path)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
        device = f"{world} process{'es' if world > 1 else ''} on {args.device.type}"
        if kw.get("fsdp"):
            fc = args.fsdp_config or {}
            mode = "FULL_SHARD" if fc.get("reshard_after_forward", True) else "SHARD_GRAD_OP"
            device += f", FSDP{fc.get('version', 2)} {mode}"
        elif args.deepspeed:
            device += f", DeepSpeed {os.path.basename(args.deepspeed)}"
        elif world > 1:
            device += ", DDP"
        print(f"train: {job['mode']}, {n_tensors} trainable tensors ({n_train} values), {len(train_ds)} records, "
              f"engine torch, {device}", file=sys.stderr, flush=True)

    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        if trainer.progress:
            trainer.progress.end()
        if trainer.metrics_file:
            trainer.metrics_file.close()
    if trainer.interrupted:
        if rank == 0:
            step = trainer.state.global_step
            print(f"interrupted after step {step}/{trainer.state.max_steps}; checkpoint saved in "
                  f"{getattr(trainer, 'last_checkpoint', job['out_dir'])}\n"
                  f"resume with the same command and --resume {step} (or --resume yes)", file=sys.stderr, flush=True)
        return INTERRUPTED
    params, _ = trainer._gather(with_moments=False)
    if rank == 0:
        ck.write_trainables(job["out_dir"], job, params, trainer._unwrapped().config)
        trainer._write_state_files(job["out_dir"])
    return 0


if __name__ == "__main__":
    main(sys.argv)
