"""Ray's accelerator type names (``ray.util.accelerators``), for ``accelerator_type=``.

``f.options(accelerator_type=NVIDIA_TESLA_V100)`` asks for a node offering the
``accelerator_type:V100`` resource, as in Ray. meshcompute does not detect accelerator
types: give a node the resource (``mesh start --resources '{"accelerator_type:V100": 1}'``).
"""

from __future__ import annotations

NVIDIA_TESLA_V100 = "V100"
NVIDIA_TESLA_P100 = "P100"
NVIDIA_TESLA_T4 = "T4"
NVIDIA_TESLA_P4 = "P4"
NVIDIA_TESLA_K80 = "K80"
NVIDIA_TESLA_A10G = "A10G"
NVIDIA_L4 = "L4"
NVIDIA_L40S = "L40S"
NVIDIA_A100 = "A100"
NVIDIA_A100_40G = "A100-40G"
NVIDIA_A100_80G = "A100-80G"
NVIDIA_H100 = "H100"
NVIDIA_H200 = "H200"
NVIDIA_B200 = "B200"
AMD_INSTINCT_MI100 = "AMD-Instinct-MI100"
AMD_INSTINCT_MI210 = "AMD-Instinct-MI210"
AMD_INSTINCT_MI250 = "AMD-Instinct-MI250X-MI250"
AMD_INSTINCT_MI250x = "AMD-Instinct-MI250X"
AMD_INSTINCT_MI300x = "AMD-Instinct-MI300X-OAM"
INTEL_MAX_1550 = "Intel-GPU-Max-1550"
INTEL_MAX_1100 = "Intel-GPU-Max-1100"
INTEL_GAUDI = "Intel-GAUDI"
AWS_NEURON_CORE = "aws-neuron-core"
GOOGLE_TPU_V4 = "TPU-V4"

__all__ = [name for name in dir() if not name.startswith("_") and name != "annotations"]
