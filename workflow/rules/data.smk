# Data and weights the experiment needs, fetched and verified once (`pcpo data fetch`; README "Data and
# weights").  Each catalogue entry is one job writing the stamp <data root>/.fetched/<name>.json only after
# its files are verified (and a reference image set is prepared); the jobs that read the data take the
# stamps as inputs, so a dry run lists what will be fetched.  The data root is $PCPO_DATA (default data/).
# The tiny world needs nothing: DATA_STAMPS is empty there.
#
# The fetch runs on the submitting host (localrules): cluster compute nodes often have no internet, the
# host that runs Snakemake has to.  Preparation of an image set uses the rule's threads.
import sys

if workflow.basedir not in sys.path:  # the pcpo package of this checkout
    sys.path.insert(0, workflow.basedir)

from pcpo.data import data_root as _data_root, load_catalogue as _load_catalogue, needs_for_config as _needs_for

DATA_ROOT = str(_data_root())
DATA_CATALOGUE = _load_catalogue()
DATA_NEEDS = _needs_for(config, DATA_CATALOGUE, DATA_ROOT)
if DATA_NEEDS.unresolved:
    print(f"WARNING: the data catalogue provides no entry for: {'; '.join(DATA_NEEDS.unresolved)}; "
          f"`pcpo data fetch --for CONFIG` will refuse until it does", file=sys.stderr)
# role (train, sample, evaluate) -> the stamps of the catalogue entries its jobs read
DATA_STAMPS = {role: [f"{DATA_ROOT}/.fetched/{name}.json" for name in names] for role, names in DATA_NEEDS.roles.items()}


localrules:
    data_fetch,


rule data_fetch:
    output:
        f"{DATA_ROOT}/.fetched/{{name}}.json",
    log:
        f"{RESULTS}/logs/data/{{name}}.log",
    wildcard_constraints:
        name="[A-Za-z0-9][A-Za-z0-9_.+-]*",
    params:
        pcpo=PCPO,
        root=lambda w, output: str(Path(output[0]).parent.parent),
        entry=lambda w: json.dumps(DATA_CATALOGUE[w.name].__dict__, sort_keys=True, default=str),
    conda:
        "../envs/pcpo.yaml"
    threads: 4
    # no resource helper on this branch yet (the cluster helper builds one): plain values
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "{params.pcpo} data fetch {wildcards.name} --root {params.root} --workers {threads} --no-progress > {log} 2>&1"
