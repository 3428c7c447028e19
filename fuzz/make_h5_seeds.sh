#!/usr/bin/env bash
# Writes small real nfkit HDF5 files with NFKIT (an nfkit binary) into DIR and turns each into
# a recipe for fuzz_h5 (fuzz/h5_recipe.py). Called by scripts/fuzz.
#   fuzz/make_h5_seeds.sh NFKIT DIR
set -euo pipefail
nfkit=$(readlink -f "$1")
mkdir -p "$2"
dir=$(cd "$2" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir/files"
cd "$dir/files"
q=(--quiet --threads 1)
ala=(--pdb "$src/data/alanine_dipeptide/ala2.pdb" --system "$src/data/alanine_dipeptide/system.xml")
"$nfkit" flow train --data gmm --n-samples 200 --steps 5 --layers 1 --hidden 8 --out flow.h5 "${q[@]}"
"$nfkit" flow train --data banana:3 --flow maf --n-samples 200 --steps 5 --layers 1 --hidden 8 --out maf.h5 "${q[@]}"
"$nfkit" flow sample --model flow.h5 -n 20 --out flow_samples.h5 "${q[@]}"
"$nfkit" cfm train --target 8gaussians --steps 5 --hidden 8 --hidden-layers 1 --n-samples 200 --out cfm.h5 "${q[@]}"
"$nfkit" cfm train --target moons --method flowmap --steps 5 --hidden 8 --hidden-layers 1 --n-samples 200 --out map.h5 "${q[@]}"
"$nfkit" md "${ala[@]}" --frames 12 --steps-per-frame 10 --equilibration 0 --out md.h5 "${q[@]}"
"$nfkit" bg train "${ala[@]}" --md md.h5 --steps 2 --layers 1 --hidden 8 --out bg.h5 "${q[@]}"
"$nfkit" bg sample "${ala[@]}" --model bg.h5 -n 8 --out bg_samples.h5 "${q[@]}"
"$nfkit" opf dataset --case "$src/data/matpower/pglib/pglib_opf_case14_ieee.m" --load-levels 1 --per-level 12 \
  --out opf_data.h5 "${q[@]}"
"$nfkit" opf train --data opf_data.h5 --case "$src/data/matpower/pglib/pglib_opf_case14_ieee.m" --epochs 1 \
  --cfm-epochs 1 --hidden 8 --layers 1 --embed 4 --velocity-hidden 8 --velocity-layers 1 --out opf_model.h5 "${q[@]}"
/usr/bin/python3 - <<'PY'
import h5py, json, numpy as np
with h5py.File('chains.h5', 'w') as f:
    f.attrs['nfkit_format'] = 'chains'
    f.attrs['format_version'] = 1
    f.attrs['names'] = json.dumps(['a', 'b'])
    f['samples'] = np.random.default_rng(0).normal(size=(2, 6, 2))
    f['ln_posterior'] = np.random.default_rng(1).normal(size=(2, 6))
    f['x'] = np.arange(12.0).reshape(6, 2)
PY
for f in *.h5; do /usr/bin/python3 "$src/fuzz/h5_recipe.py" "$f" "$dir/${f%.h5}.recipe"; done
