"""jaxfuse: JAX-accelerated template fusion of overlapping temporal action instances.

Instead of non-maximum suppression, each group of overlapping scored segments is
fused into one instance by fitting a template distribution to the group under
softmax(score / T) sampling probabilities (Zhou et al., CVPR 2023).
"""

from jaxfuse._cas import CasProposals, max_runs_per_threshold, proposals_from_cas
from jaxfuse._compilation_cache import (
    CompilationCacheStatus,
    compilation_cache_status,
    set_compilation_cache,
)
from jaxfuse._densities import (
    TemplateDensity,
    exponential_density,
    gaussian_density,
    laplace_density,
    student_t_density,
    uniform_density,
)
from jaxfuse._detect import PUBLISHED_CLASS_THRESHOLD, PUBLISHED_THRESHOLDS, VideoDetections, detect, detect_videos
from jaxfuse._detection_file import DetectionFileError, FileFusionReport, fuse_detection_file, fuse_detections_json
from jaxfuse._evaluate import (
    ACTIVITYNET_THRESHOLDS,
    THUMOS14_THRESHOLDS,
    DetectionMAP,
    Detections,
    GroundTruth,
    evaluate_detections,
)
from jaxfuse._evaluate_json import ActivityNetData, evaluate_json, load_activitynet_json
from jaxfuse._fit import FitResult, fit_template
from jaxfuse._fuse import (
    FusionResult,
    compile_count,
    fuse_exponential,
    fuse_gaussian,
    fuse_groups,
    fuse_laplace,
    fuse_student_t,
    fuse_uniform,
)
from jaxfuse._grouping import ProposalGroups, group_proposals
from jaxfuse._interval_lp import LPResultCode
from jaxfuse._pseudo_labels import PseudoLabels, pseudo_labels
from jaxfuse._proposal_lists import PaddedProposals, fuse_proposal_lists, pack_proposals, unpack_proposals
from jaxfuse._proposals import FusedProposals, fuse_proposals
from jaxfuse._presets import DEFAULT, PRESETS, PUBLISHED, FusionSettings
from jaxfuse._ragged import (
    PackedGroups,
    RaggedBuckets,
    bucket_size,
    pack_groups,
    pack_ragged,
    unpack_groups,
    unpack_members,
    unpack_ragged,
    unpack_ragged_members,
)
from jaxfuse._ragged_fusion import RaggedFusion, fuse_ragged
from jaxfuse._result import ResultCode
from jaxfuse._snippets import SnippetLabels, segments_to_snippets
from jaxfuse._sharding import fuse_proposals_sharded, item_mesh
from jaxfuse._student_t import StudentTParameters
from jaxfuse._templates import ExponentialParameters, GaussianParameters, LaplaceParameters, UniformParameters
from jaxfuse.tools.videos import SyntheticVideos, VideoParameters, synthetic_videos
from jaxfuse._weights import member_probabilities

__version__ = "0.1.0"

# The persistent compilation cache is set up at jaxfuse's first call that may compile, not here
# (see jaxfuse/_compilation_cache.py: ensure_compilation_cache).

__all__ = [
    "ACTIVITYNET_THRESHOLDS",
    "ActivityNetData",
    "CasProposals",
    "CompilationCacheStatus",
    "DetectionFileError",
    "DEFAULT",
    "DetectionMAP",
    "Detections",
    "ExponentialParameters",
    "FileFusionReport",
    "FitResult",
    "FusedProposals",
    "FusionSettings",
    "FusionResult",
    "GaussianParameters",
    "GroundTruth",
    "LPResultCode",
    "LaplaceParameters",
    "PUBLISHED_CLASS_THRESHOLD",
    "PUBLISHED_THRESHOLDS",
    "PRESETS",
    "PUBLISHED",
    "PackedGroups",
    "PaddedProposals",
    "ProposalGroups",
    "PseudoLabels",
    "RaggedBuckets",
    "RaggedFusion",
    "ResultCode",
    "SnippetLabels",
    "StudentTParameters",
    "SyntheticVideos",
    "THUMOS14_THRESHOLDS",
    "TemplateDensity",
    "UniformParameters",
    "VideoDetections",
    "VideoParameters",
    "bucket_size",
    "compilation_cache_status",
    "compile_count",
    "detect",
    "detect_videos",
    "evaluate_detections",
    "evaluate_json",
    "exponential_density",
    "fit_template",
    "fuse_detection_file",
    "fuse_detections_json",
    "fuse_exponential",
    "fuse_gaussian",
    "fuse_groups",
    "fuse_laplace",
    "fuse_proposal_lists",
    "fuse_proposals",
    "fuse_proposals_sharded",
    "fuse_ragged",
    "fuse_student_t",
    "fuse_uniform",
    "gaussian_density",
    "group_proposals",
    "item_mesh",
    "laplace_density",
    "load_activitynet_json",
    "max_runs_per_threshold",
    "member_probabilities",
    "pack_groups",
    "pack_proposals",
    "pack_ragged",
    "proposals_from_cas",
    "pseudo_labels",
    "segments_to_snippets",
    "set_compilation_cache",
    "student_t_density",
    "synthetic_videos",
    "uniform_density",
    "unpack_groups",
    "unpack_members",
    "unpack_proposals",
    "unpack_ragged",
    "unpack_ragged_members",
]
