"""Work per replica of the distributed tiled batch entropy in JAX, at 1, 2 and 4 CPU devices.

`python benchmarks/distributed_tiled_jax.py [--bits 16] [--tokens 2048] [--tile 65536]`

For each device count R (a fresh process with
`--xla_force_host_platform_device_count=R`), one jitted `jax.shard_map` step of
`jax.value_and_grad` of the aux loss over a global batch of `--tokens` tokens,
sharded over R devices, with `Config.entropy_tile` forcing the tiled path (so
replicas all-gather bit logits and split the tile grid). It reports

* `flops`: XLA's cost analysis of the per-device program (what one replica
  computes), the direct measure of work per replica. XLA counts the body of a
  loop once, whatever its trip count, so the default tile (`2**16` entries, the
  whole `2**8 x 2**8` grid at D = 16) makes every replica's share one tile, one
  trip of the tile loop: the count is then the share's;
* `ms`: the median wall time of the step (all devices on the same CPU cores, so
  it does not fall with R on a machine with fewer cores than devices);
* the collectives of the compiled program (all-gather / all-reduce /
  reduce-scatter and their operand sizes).

Prints one JSON line per device count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time


def child(devices: int, bits: int, tokens: int, tile: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", False)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    import lfq

    assert jax.device_count() == devices, jax.devices()
    cfg = lfq.Config(codebook_dim=bits, inv_temperature=10.0, entropy_tile=tile)
    be = lfq.get("jax")
    mesh = Mesh(np.array(jax.devices()), ("data",))
    z = jnp.asarray(np.random.default_rng(0).standard_normal((tokens, bits)).astype(np.float32) * 0.3)

    def step(z):
        return jax.value_and_grad(lambda z_: be.lfq(z_, cfg, axis_name="data").aux_loss)(z)

    run = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=P("data"), out_specs=(P(), P("data"))))
    compiled = run.lower(z).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    text = compiled.as_text()
    collectives = sorted(set(re.findall(r"= (\w+\[[^\]]*\])[^=]*? (all-gather|all-reduce|reduce-scatter)\(", text)))
    jax.block_until_ready(compiled(z))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(compiled(z))
        times.append(1e3 * (time.perf_counter() - start))
    return {
        "devices": devices,
        "bits": bits,
        "tokens": tokens,
        "tile": tile,
        "flops": float(cost.get("flops", float("nan"))),
        "ms": float(np.median(times)),
        "collectives": [f"{op} {shape}" for shape, op in collectives],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=2**16)
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.bits, args.tokens, args.tile)))
        return
    for devices in args.devices:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        cmd = [sys.executable, __file__, "--child", str(devices), "--bits", str(args.bits)]
        cmd += ["--tokens", str(args.tokens), "--tile", str(args.tile)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
