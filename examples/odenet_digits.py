"""Train ODE-Net on scikit-learn's digits, showing NFE as it trains; plot NFE and trajectories.

    python examples/odenet_digits.py [--epochs 10] [--out odenet_digits.png]

Writes a PNG with two panels: forward/backward NFE per epoch (the adaptive
solver spends more evaluations as the field grows more complex during training)
and a few hidden-state trajectories over t (8 channels of the ODE block's state
at one spatial position, for one test image).
"""

import argparse

import numpy as np

import odezoo


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--atol", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--out", default="odenet_digits.png")
    args = p.parse_args()

    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from odezoo import ODEBlock

    x_train, y_train = odezoo.data.load("digits", "train")
    x_test, y_test = odezoo.data.load("digits", "test")
    model = odezoo.build(
        "odenet", input_shape=x_train.shape[1:], rtol=args.rtol, atol=args.atol, channels=args.channels
    )
    model.compile(
        keras.optimizers.Adam(args.lr), "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=True
    )
    history = model.fit(
        x_train.astype("float32"),
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_test.astype("float32"), y_test),
        verbose=2,
    )
    logs = history.history
    print(
        f"test accuracy {logs['val_accuracy'][-1]:.4f}; NFE forward {logs['nfe_forward'][-1]:.0f}, "
        f"backward {logs['nfe_backward'][-1]:.0f}"
    )

    # trajectories: the same field, asked for the states at 20 times
    block = model.get_layer("ode_block")
    stem = keras.Model(model.input, block.input)
    traced = ODEBlock(block.field, rtol=args.rtol, atol=args.atol, solution_times=list(np.linspace(0, 1, 21)[1:]))
    h0 = stem(x_test[:1].astype("float32"))
    states = np.concatenate([h0.numpy()[:, None], traced(h0).numpy()], axis=1)  # (1, 21, H, W, C)
    # one spatial position: the field ends in GroupNorm, whose per-channel spatial mean stays ~0
    curves = states[0, :, 0, 0, :]  # (21, C)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(logs["nfe_forward"]) + 1)
    ax1.plot(epochs, logs["nfe_forward"], "o-", label="forward")
    ax1.plot(epochs, logs["nfe_backward"], "s-", label="backward (adjoint)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("field evaluations (last batch)")
    ax1.set_title("ODE-Net NFE while training")
    ax1.legend()
    t = np.linspace(0, 1, 21)
    for c in range(min(8, curves.shape[1])):
        ax2.plot(t, curves[:, c])
    ax2.set_xlabel("t")
    ax2.set_ylabel("h(t) at one position, 8 channels")
    ax2.set_title("hidden-state trajectories (one test image)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
