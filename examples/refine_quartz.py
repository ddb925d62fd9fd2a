"""Refine α-quartz against the bundled 3D-ED data from Python, and print the result.

    python examples/refine_quartz.py [--epochs 80] [--out refinement] [--no-setup]

The same as ``blochnet refine --example quartz`` with the configuration below; the
defaults of :class:`blochnet.RefineConfig` are used for everything it does not set.
"""

from __future__ import annotations

import argparse

import blochnet
from blochnet.examples import example_dataset_path, example_path
from blochnet.io.cif_write import format_su


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--out", default="refinement")
    parser.add_argument(
        "--no-setup",
        action="store_true",
        help="skip the thickness scan and convergence check (start at 900 Å)",
    )
    args = parser.parse_args(argv)

    crystal = blochnet.read_structure(example_path("quartz"))
    data = blochnet.read_pets(example_dataset_path("quartz"))
    config = blochnet.RefineConfig(
        epochs=args.epochs,
        auto_setup=not args.no_setup,
        # the paper's Gaussian per frame; "flexible" also learns how flat it is
        thickness=blochnet.ThicknessConfig(
            kind="neural", shape="gaussian", t0=900.0 if args.no_setup else None
        ),
    )

    def progress(epoch) -> None:
        if epoch.epoch % 10 == 0 or epoch.epoch == args.epochs:
            r1 = 100 * epoch.r_obs_frame_mean
            print(f"epoch {epoch.epoch:3d}: R1(obs) {r1:.2f} % frame mean")

    result = blochnet.refine(crystal, [data], args.out, config, report=progress)
    report = result.report
    print(
        f"R1(obs) {100 * report['r_obs']:.2f} % pooled / {100 * report['r_obs_frame_mean']:.2f} % "
        f"frame mean over {report['n_obs']} obs; wR2 {100 * report['wr2']:.2f} %"
    )
    hand = report["absolute_structure"]
    inverse = hand["inverse_of_refined"]["r_obs_frame_mean"]
    turned = (
        " (the inverse of the starting structure)"
        if hand["inverted"]
        else " (as in the starting structure)"
    )
    print(
        f"absolute structure: {result.crystal.spacegroup}{turned}; the refined model "
        f"inverted gives R1(obs) {100 * inverse:.2f} % frame mean"
    )
    for atom in report["atoms"]:
        xyz = "  ".join(format_su(x, s) for x, s in zip(atom["xyz"], atom["xyz_su"], strict=True))
        print(f"{atom['label']:<4} xyz {xyz}   Ueq {format_su(atom['uiso'], atom['uiso_su'])} Å²")
    print(f"refined structure: {result.out_dir / 'refined.cif'}")


if __name__ == "__main__":
    main()
