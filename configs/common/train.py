# The training settings shared by every model config: `train = get_config("common/train.py").train`
# then change a few fields (e.g. train.output_dir, train.max_iter) in the model's config.
train = dict(
    # Where checkpoints, metrics.json, TensorBoard events, config.yaml and log.txt go.
    output_dir="./output",
    # Weights loaded before training (or evaluated with --eval-only): a local .pth, an
    # http(s):// URL or a detectron2:// path. Empty: start from the constructors' initialisation.
    # Ignored by --resume when output_dir already holds a checkpoint.
    init_checkpoint="",
    # Total number of iterations (one iteration = one batch of dataloader.train.total_batch_size
    # images over all processes). Model configs set it with detrex_lite.solver.epochs_to_iters.
    max_iter=90000,
    # Automatic mixed precision. dtype "float16" uses a GradScaler; "bfloat16" needs none (CUDA
    # with bf16 support, or CPU). Disabled: everything in float32.
    amp=dict(enabled=False, dtype="float16"),
    # Arguments of DistributedDataParallel when more than one process trains.
    ddp=dict(
        # Buffers (e.g. BatchNorm statistics) are not synchronised: the backbone uses frozen BN.
        broadcast_buffers=False,
        # Set True only if some parameter gets no gradient in an iteration (slower).
        find_unused_parameters=False,
        # Compress gradients to fp16 for the all-reduce (saves bandwidth across machines).
        fp16_compression=False,
    ),
    # Periods are derived from train.max_iter when training starts: a float in (0, 1] is a
    # fraction of train.max_iter (so `train.max_iter=1000` still evaluates and saves 10 / 20
    # times), an int is a number of iterations.
    # Save a checkpoint every `period` (0.05: 20 times over the run; 2.5 epochs of the 50-epoch
    # schedule) and at the end, keeping the newest `max_to_keep` periodic ones (None keeps all).
    # Files are written atomically.
    checkpointer=dict(period=0.05, max_to_keep=100),
    # Evaluate on dataloader.test every eval_period (0.1: 10 times over the run; 0: only at the end).
    eval_period=0.1,
    # Print / write metrics every log_period iterations: one line on the terminal (total loss, the
    # final decoder layer's terms, lr, time, ETA); every scalar in metrics.json and TensorBoard.
    log_period=20,
    # model_best.pth: written after each evaluation whose `metric` (a key of the evaluation
    # results, as in metrics.json: "bbox/AP", "bbox/AP50", ...) is the best so far (mode "max":
    # higher is better; "min"). Weights (and EMA) with the run metadata and meta["best"], no
    # optimizer state; --run and Predictor.from_run use it. The closing summary reports the
    # metric's best and last values; enabled=False keeps the summary but writes no file.
    best_checkpoint=dict(enabled=True, metric="bbox/AP", mode="max"),
    # Clip the global gradient norm before each optimizer step (the official DETR recipes use
    # max_norm=0.1 with the L2 norm).
    clip_grad=dict(enabled=True, params=dict(max_norm=0.1, norm_type=2)),
    # Exponential moving average of the weights: ema = decay * ema + (1 - decay) * weights after
    # every step. Saved in checkpoints; evaluation during training uses the EMA weights. With
    # use_ema_weights_for_eval_only, --eval-only evaluates the checkpoint's EMA weights.
    model_ema=dict(enabled=False, decay=0.9998, use_ema_weights_for_eval_only=False),
    # Seed of python, numpy and torch (offset by the process rank); negative: random.
    seed=-1,
    # "auto": cuda when a GPU is visible, else cpu. Or "cpu" / "cuda" explicitly.
    device="auto",
    # Seconds a process waits for the others in a collective (and at start-up) before the job
    # fails: a dead or stuck worker stops the job with an error instead of hanging it.
    dist_timeout=1800,
    # torch.backends.cudnn.benchmark during training.
    cudnn_benchmark=False,
)
