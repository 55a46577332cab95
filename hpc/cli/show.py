"""A figure of one structure's descriptor (``cloudvox show``)."""
import json

from cloudvox.io.sources import FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="figure of one structure's descriptor (cell, density, reciprocal set, voxels)")
    p.add_argument("input", nargs="?", help="AFLOW .json/.jsonl, CIF/POSCAR/XYZ, QM9 .xyz, or a feature file .h5 "
                                            "(omit with --format qm9 or prototypes for the embedded data)")
    p.add_argument("--format", choices=list(FORMATS) + ["h5"], help="default: from the file name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=0, help="which structure (0-based)")
    which.add_argument("--id", help="which structure, by id")
    p.add_argument("--descriptor", choices=["cartesian", "spherical"])
    p.add_argument("--n", type=int)
    p.add_argument("--length", type=float)
    p.add_argument("--sigma", type=float)
    p.add_argument("--channels", choices=["element", "total", "properties"])
    p.add_argument("--panel", action="append", choices=["cell", "density", "reciprocal", "voxels"],
                   help="draw only this panel (repeatable); default all")
    p.add_argument("--rotate", help="rotate G before binning: AXIS:DEGREES, e.g. z:30")
    p.add_argument("--vary", help="small multiples of the voxel panel: PARAM=v1,v2,... (sigma, length or n)")
    p.add_argument("--compare", help="original next to a transformed copy: translate:x,y,z | supercell:a,b,c | rotate:AXIS:DEG")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_show)


def _axis_rotation(spec: str):
    import numpy as np
    axis, deg = spec.split(":")
    t = np.radians(float(deg))
    c, s = np.cos(t), np.sin(t)
    k = "xyz".index(axis.strip().lower())
    R = np.eye(3)
    i, j = [a for a in range(3) if a != k]
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def _guess_format(path: str) -> str:
    """Input format from the file name: a feature file (.h5), else :func:`cloudvox.io.format_of`."""
    from cloudvox.io import format_of
    return "h5" if path.lower().endswith((".h5", ".hdf5")) else format_of(path)


def load_one(input_path, fmt, index, sid):
    """(structure, descriptor parameters of a feature file or {}) selected by index or id, or SystemExit."""
    from cloudvox.io import iter_records
    if fmt is None:
        if input_path is None:
            raise SystemExit("cloudvox show: give an input file, or --format qm9|prototypes for the embedded data")
        fmt = _guess_format(input_path)
    if fmt == "h5":
        from cloudvox.featurefile import FeatureFile
        ff = FeatureFile(input_path)
        ids = ff.ids
        if sid is not None:
            if sid not in ids:
                raise SystemExit(f"cloudvox show: no structure with id {sid!r} in {input_path}")
            index = ids.index(sid)
        if not -ff.n <= index < ff.n:
            raise SystemExit(f"cloudvox show: index {index} out of range: {input_path} holds {ff.n} structures")
        return ff.structure(index), ff.params
    records = list(iter_records(fmt, [input_path] if input_path else None, limit=None if (sid or fmt != "qm9") else index + 1))
    good = [r for r in records if r.ok]
    if sid is not None:
        hits = [r for r in good if r.id == sid]
        if not hits:
            raise SystemExit(f"cloudvox show: no structure with id {sid!r} in {input_path or fmt}")
        return hits[0].structure, {}
    if not -len(good) <= index < len(good):
        raise SystemExit(f"cloudvox show: index {index} out of range: {input_path or fmt} holds {len(good)} structures")
    return good[index].structure, {}


def cmd_show(args, command: str) -> int:
    from cloudvox.descriptors import ReciprocalVoxelizer
    from cloudvox.viz import structure as show
    structure, params = load_one(args.input, args.format, args.index, args.id)
    from cloudvox.config import descriptor_defaults
    defaults = descriptor_defaults()  # the voxelizer's own defaults: one place
    d = {k: defaults[k] for k in ("sigma", "length", "n", "mode", "channels")}
    d.update({k: params[k] for k in ("sigma", "length", "n", "mode", "channels") if k in params})
    for flag, key in (("descriptor", "mode"), ("n", "n"), ("length", "length"), ("sigma", "sigma"), ("channels", "channels")):
        if getattr(args, flag) is not None:
            d[key] = getattr(args, flag)
    if params.get("channels") == "properties" and d["channels"] == "properties":
        d["properties"] = tuple(params["properties"])
    vox = ReciprocalVoxelizer(**d)
    R = _axis_rotation(args.rotate) if args.rotate else None
    if args.vary:
        key, values = args.vary.split("=")
        values = [float(v) if key != "n" else int(v) for v in values.split(",")]
        voxs = [ReciprocalVoxelizer(**dict(d, **{key: v})) for v in values]
        fig = show.compare_figure([structure] * len(values), [f"{key} = {v:g}" for v in values], voxs)
    elif args.compare:
        kind, _, value = args.compare.partition(":")
        if kind == "translate":
            other, label, rot = structure.translated([float(x) for x in value.split(",")]), f"translated by ({value}) Å", None
        elif kind == "supercell":
            other, label, rot = structure.supercell([int(x) for x in value.split(",")]), f"{value.replace(',', 'x')} supercell", None
        elif kind == "rotate":
            other, label, rot = structure, f"rotated {value.replace(':', ' by ')}°", _axis_rotation(value)
        else:
            raise SystemExit(f"cloudvox show: unknown --compare {kind!r}")
        fig = show.compare_figure([structure, other], ["original", label], [vox, vox], [None, rot])
    else:
        fig = show.figure(structure, vox, args.panel or show.PANELS, R)
    show.save(fig, args.out)
    print(json.dumps(dict(out=args.out, id=structure.id, formula=structure.formula, descriptor=vox.params)))
    return 0
