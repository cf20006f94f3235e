"""``vmerge bench`` and ``vmerge profile``: the commands and their tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mergekit_vision.cli.common import (
    RecipeArg,
    SetOption,
    console,
    guarded,
    load_toy_recipe,
    user_error,
)


def bench(
    recipe: Annotated[
        Path | None,
        typer.Argument(
            help="Recipe YAML file (omit with --student; with --gpu-check, default "
            "recipes/sam_clip.yaml)."
        ),
    ] = None,
    conflict: Annotated[
        str | None,
        typer.Option(
            help="Also time conflict strategies, comma-separated, first = baseline "
            "(e.g. sum,pcgrad,upgrad)."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Timed steps per variant (after warm-up).")] = 10,
    set_: SetOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
    student: Annotated[
        str | None,
        typer.Option(help="Student only: MFU of a ViT-Det variant (vit_b, vit_l, vit_h)."),
    ] = None,
    resolution: Annotated[int, typer.Option(help="--student: input side in px.")] = 1024,
    batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Images per step: --student (default 1); --gpu-check, per task (default 8); "
            "--inference, the throughput batch (default 8).",
        ),
    ] = None,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile", help="--student: also time both attentions through torch.compile."
        ),
    ] = False,
    cached_targets: Annotated[
        str | None,
        typer.Option(help="Also time TASK online vs from its targets cache (images/s)."),
    ] = None,
    keep_freed_memory: Annotated[
        bool,
        typer.Option(
            "--keep-freed-memory/--system-malloc",
            help="--student: keep freed memory for reuse (as training does on CPU), or time "
            "with glibc's default allocator settings.",
        ),
    ] = True,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data loaders of this recipe: images/s per worker of each task at its "
            "resolution, workers needed, PIL vs torchvision JPEG decoding."
        ),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="--data: samples timed per task.")] = 32,
    gpu_steps_per_s: Annotated[
        float | None,
        typer.Option(min=0.0, help="--data: the GPU's steps/s to size the loader workers for."),
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic",
            help="--data: time SA-1B-style and WebDataset sample files written to a temporary "
            "folder instead of the recipe's.",
        ),
    ] = False,
    gpu_check: Annotated[
        bool,
        typer.Option(
            "--gpu-check",
            help="The bare student and one full training step of RECIPE on CUDA in bf16, "
            "random weights: MFU, step-time split, peak memory.",
        ),
    ] = False,
    smoke: Annotated[
        bool,
        typer.Option("--smoke", help="--gpu-check: run on CPU in fp32, the recipe shrunk (CI)."),
    ] = False,
    peak_tflops: Annotated[
        float | None,
        typer.Option(min=0.0, help="--gpu-check: the GPU's dense bf16 peak, if not known."),
    ] = None,
    inference: Annotated[
        Path | None,
        typer.Option(
            help="Inference cost of RUN_DIR_OR_RECIPE: the merged model vs the separate teachers "
            "for both abilities (FLOPs, params, latency, throughput, peak memory), eager, "
            "torch.compile, ONNX Runtime fp32 and int8; --steps rounds.",
        ),
    ] = None,
    size: Annotated[
        str,
        typer.Option(help="--inference RECIPE: 'reference' (its architectures) or 'tiny'."),
    ] = "reference",
    variants: Annotated[
        str | None,
        typer.Option(help="--inference: a subset of eager,compile,ort,ort_int8."),
    ] = None,
    int8_eval: Annotated[
        bool,
        typer.Option(
            "--int8-eval", help="--inference RUN_DIR: also its eval metrics, int8 vs fp32."
        ),
    ] = False,
) -> None:
    """Training throughput, step-time split and MFU, SDPA vs original attention interleaved;
    with --data, the data loaders' images/s; with --gpu-check, the reference recipe on CUDA."""
    from mergekit_vision.cli import perf_checks
    from mergekit_vision.tools.bench import bench_student, bench_training

    if inference is not None:
        _bench_inference(inference, size, variants, int8_eval, set_, steps, json_out, batch or 8)
        return
    if data is not None:
        perf_checks.data_bench(
            data,
            overrides=set_,
            samples=samples,
            gpu_steps_per_s=gpu_steps_per_s,
            synthetic=synthetic,
            json_out=json_out,
        )
        return
    if gpu_check:
        perf_checks.gpu_check(
            recipe or Path("recipes/sam_clip.yaml"),
            smoke=smoke,
            overrides=set_,
            batch=batch,
            steps=steps,
            peak_tflops=peak_tflops,
            json_out=json_out,
        )
        return
    if student is not None:
        from mergekit_vision.sam.variants import SAM_VARIANTS

        if recipe is not None:
            user_error(ValueError("give a RECIPE or --student, not both"))
        if student not in SAM_VARIANTS:
            user_error(
                ValueError(f"--student {student!r}: choose one of {', '.join(SAM_VARIANTS)}")
            )
        attentions = ("sdpa", "original")
        if compile_:
            attentions = ("sdpa+compile", "original+compile", *attentions)
        result = guarded(
            lambda: bench_student(
                variant=student,
                resolution=resolution,
                batch=batch or 1,
                steps=steps,
                attentions=attentions,
                keep_memory=keep_freed_memory,
            )
        )
        print_student_bench(console, result)
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=2))
        return
    if recipe is None:
        user_error(ValueError("give a RECIPE, or --student VARIANT for the student alone"))
    result = guarded(lambda: bench_training(recipe, overrides=set_, steps=steps))
    print_training_bench(console, result)
    if conflict is not None:
        result["conflict"] = _bench_conflict(recipe, conflict, set_, steps)
    if cached_targets is not None:
        result["cached_targets"] = _bench_cached_targets(recipe, cached_targets, set_, steps)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))


def _bench_inference(
    target: Path,
    size: str,
    variants: str | None,
    int8_eval: bool,
    set_: list[str] | None,
    rounds: int,
    json_out: Path | None,
    throughput_batch: int,
) -> None:
    from mergekit_vision.tools.inference_bench import bench_inference
    from mergekit_vision.tools.inference_runners import VARIANTS
    from mergekit_vision.tools.inference_systems import Size
    from mergekit_vision.tools.inference_table import print_inference_bench
    from mergekit_vision.tools.int8_eval import int8_metric_change

    chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else VARIANTS
    if size not in ("reference", "tiny") or not set(chosen) <= set(VARIANTS):
        user_error(
            ValueError(f"--size: reference or tiny; --variants: a subset of {','.join(VARIANTS)}")
        )
    chosen_size: Size = "tiny" if size == "tiny" else "reference"
    result = guarded(
        lambda: bench_inference(
            target,
            size=chosen_size,
            overrides=set_,
            variants=chosen,
            rounds=rounds,
            throughput_batch=throughput_batch,
        )
    )
    if int8_eval:
        result["int8_eval"] = guarded(lambda: int8_metric_change(target))
    print_inference_bench(console, result)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))


def _bench_conflict(recipe: Path, conflict: str, set_: list[str] | None, steps: int) -> dict:
    from mergekit_vision.tools.bench import bench_conflict

    names = [c.strip() for c in conflict.split(",") if c.strip()]
    result = guarded(lambda: bench_conflict(recipe, strategies=names, overrides=set_, steps=steps))
    table = Table("strategy", "median step (s)", f"ratio to {names[0]}", title=result["stage"])
    for name in names:
        table.add_row(
            name, f"{result['median_step_s'][name]:.3f}", f"{result['ratio_to_first'][name]:.3f}"
        )
    console.print(table)
    return result


def profile(
    recipe: RecipeArg,
    set_: SetOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Parameters and FLOPs of the merged model vs running the teachers separately."""
    from mergekit_vision.tools.model_cost import profile_recipe

    result = guarded(lambda: profile_recipe(recipe, overrides=set_))
    print_profile(console, result)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))


def _bench_cached_targets(recipe: Path, task: str, set_: list[str] | None, steps: int) -> dict:
    from mergekit_vision.tools.cache_bench import bench_cached_targets

    result = guarded(lambda: bench_cached_targets(recipe, task=task, overrides=set_, steps=steps))
    table = Table(
        "stage", "online img/s", "cached img/s", "speed-up", title=f"task {task}: targets"
    )
    for stage, row in result["stages"].items():
        ips = row["images_per_s"]
        table.add_row(
            stage, f"{ips['online']:.1f}", f"{ips['cached']:.1f}", f"{row['speedup']:.2f}x"
        )
    console.print(table)
    return result


def print_training_bench(console: Console, result: dict[str, Any]) -> None:
    attentions = list(result["attention"])
    table = Table(
        "", *attentions, title=f"{result['recipe']}: stage {result['stage']} ({result['device']})"
    )
    rows = {name: result["attention"][name] for name in attentions}
    table.add_row("step (s)", *(f"{r['median_step_s']:.3f}" for r in rows.values()))
    for phase in next(iter(rows.values()))["phase_s"]:
        table.add_row(f"  {phase} (s)", *(f"{r['phase_s'][phase]:.3f}" for r in rows.values()))
    for task in result["batch_sizes"]:
        table.add_row(
            f"{task} images/s", *(f"{r['images_per_s'][task]:.1f}" for r in rows.values())
        )
    table.add_row("MFU", *(f"{r['mfu']:.1%}" for r in rows.values()))
    console.print(table)
    console.print(
        f"model {result['model_gflops_per_step']:.2f} GFLOP/step (student + heads, fwd + bwd), "
        f"teachers {result['teacher_gflops_per_step']:.2f} GFLOP/step; "
        f"matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s; "
        f"peak memory {result['peak_memory_mb']:.0f} MB; {result['threads']} threads"
    )
    if result["random_weights"]:
        console.print("(teacher checkpoints missing: timed with random weights)")


def print_student_bench(console: Console, result: dict[str, Any]) -> None:
    attentions = list(result["mfu"])
    title = (
        f"{result['variant']} forward + backward, {result['resolution']} px, "
        f"batch {result['batch']}, {result['threads']} threads"
    )
    table = Table("", *attentions, title=title)
    table.add_row("step (s)", *(f"{result['median_step_s'][a]:.2f}" for a in attentions))
    table.add_row("MFU", *(f"{result['mfu'][a]:.1%}" for a in attentions))
    speedup = next(key for key in result if key.startswith("speedup_vs_"))
    table.add_row(speedup.replace("_", " "), *(f"{result[speedup][a]:.2f}x" for a in attentions))
    table.add_row("executed GFLOP", *(f"{result['executed_gflops'][a]:.0f}" for a in attentions))
    console.print(table)
    allocator = "freed memory kept" if result["freed_memory_kept"] else "system malloc"
    console.print(
        f"model {result['model_gflops']:.0f} GFLOP per step (segment_anything's encoder); "
        f"matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s (median of rounds); {allocator}"
    )


def print_profile(console: Console, result: dict[str, Any]) -> None:
    table = Table(
        "task",
        "px",
        "teacher",
        "teacher Mparams",
        "teacher GFLOPs",
        "student GFLOPs",
        "head",
        "head Mparams",
        "head GFLOPs",
        title=f"{result['recipe']}: per image, forward",
    )
    for row in result["tasks"]:
        table.add_row(
            row["task"],
            str(row["resolution"]),
            row["teacher"],
            f"{row['teacher_params_m']:.2f}",
            f"{row['teacher_gflops']:.3f}",
            f"{row['student_gflops']:.3f}",
            row["head"],
            f"{row['head_params_m']:.2f}",
            f"{row['head_gflops']:.3f}",
        )
    console.print(table)
    totals = result["total_gflops"]
    ratio = result["merged_flops_ratio"]
    console.print(
        f"params: merged {result['merged_params_m']:.2f} M (student "
        f"{result['student_params_m']:.2f} M) vs teachers {result['teachers_params_m']:.2f} M "
        f"({result['teachers_used_params_m']:.2f} M used for these outputs)\n"
        f"GFLOPs for all outputs: merged {totals['merged']:.3f} vs teachers separately "
        f"{totals['teachers']:.3f}" + (f" ({ratio:.2f}x)" if ratio is not None else "")
    )
    if result["random_weights"]:
        console.print("(checkpoints missing: measured with random weights)")


def toy_sam_cost(
    recipe: RecipeArg,
    variant: Annotated[
        list[str],
        typer.Option(
            help="Toy SAM overrides to time against the recipe's own setting (repeatable): "
            'training keys, e.g. "prompts_per_image=16" or "batch_size=4,prompts_per_image=32", '
            "and architecture keys of the SAM teacher's params as model.KEY, e.g. "
            '"model.decoder_depth=1".'
        ),
    ],
    rounds: Annotated[int, typer.Option(min=1, help="Rounds; the settings alternate in each.")] = 3,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per setting and round.")] = 3,
    set_: SetOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """What a toy SAM training step costs under other settings, timed side by side."""
    from mergekit_vision.errors import Issue, RecipeError
    from mergekit_vision.tools.toy_sam_cost import (
        SamSetting,
        parse_overrides,
        setting_variant,
        time_sam_steps,
    )

    def measure() -> dict[str, Any]:
        resolved = load_toy_recipe(recipe, set_, missing="no 'toy' section: nothing to time")
        toy = resolved.toy
        sam_params = resolved.teachers[toy.sam_teacher].params
        base = SamSetting(sam_params, toy.sam_training)
        variants = {"recipe": base}
        for text in variant:
            try:
                variants[text] = setting_variant(base, parse_overrides(text))
            except ValueError as err:
                raise RecipeError(str(recipe), [Issue(f"--variant {text!r}", str(err))]) from None
        return time_sam_steps(world=toy.world, variants=variants, rounds=rounds, steps=steps)

    result = guarded(measure)
    table = Table(
        title=f"toy SAM training step, {result['threads']} thread(s), "
        f"{result['rounds']} rounds x {result['steps']} steps, median"
    )
    table.add_column("setting", overflow="fold")
    for column in ("scenes x prompts", "steps", "s/step", "step cost", "total cost"):
        table.add_column(column, justify="right")
    for name, row in result["variants"].items():
        training = row["training"]
        table.add_row(
            name,
            f"{training['batch_size']} x {training['prompts_per_image']}",
            str(training["steps"]),
            f"{row['step_s']:.3f}",
            f"{row['step_cost']:.2f}x",
            f"{row['total_cost']:.2f}x",
        )
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
