"""Training: MetaClip2 on Ray Train workers with DeepSpeed ZeRO 0-3, fed by the Ray Data
stream (docs/architecture.md, "Training"). One job per module:

    config.py        TrainSettings / LoopConfig: the typed, frozen settings of a run
    engine.py        DeepSpeed config, lr schedule, model + engine build
    state.py         TrainState: step, data position, accounting, history
    stream.py        EpochStream: one epoch of this rank's micro-batches
    step.py          StepRunner: micro-batches -> one optimizer step, totals over ranks
    checkpointer.py  when to save, the checkpoint directory, resume (the only report of one)
    evaluator.py     in-training zero-shot eval (the eval set cached on the Evaluator)
    metrics.py       the step log line and TensorBoard
    hooks.py         testing hooks: fail_at_step, throttle_step_s
    loop.py          train_loop: the worker loop calling the components above
    tokenizer.py     the run's tokenizer (given, or trained on the curated captions)
    stage.py         `worldclip train` / `export`: plan_steps, build_trainer, run, run_export

Checkpoint resolution and HF export are pipelines/checkpoint_io.py (shared with evaluation).
"""
