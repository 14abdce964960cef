"""Model partitions, defined once: one partition per generative model of the run config.

The registry is read when the code location loads, so adding a model to the YAML adds a
partition without a code change (reload the code location in the UI).
"""

from __future__ import annotations

import dagster as dg

from blindspot_assets.config import load_config
from blindspot_assets.defs.resources import default_config_path

model_partitions = dg.StaticPartitionsDefinition(list(load_config(default_config_path()).models))

# One run may cover a range of models: each model asset loops over ``context.partition_keys``.
single_run = dg.BackfillPolicy.single_run()
