"""jaxfuse: JAX-accelerated template fusion of overlapping temporal action instances.

Instead of non-maximum suppression, each group of overlapping scored segments is
fused into one instance by fitting a template distribution to the group under
softmax(score / T) sampling probabilities (Zhou et al., CVPR 2023).
"""

from jaxfuse._detection.cas_proposals import CasProposals, max_runs_per_threshold, proposals_from_cas
from jaxfuse._runtime.compilation_cache import (
    CompilationCacheStatus,
    compilation_cache_status,
    set_compilation_cache,
)
from jaxfuse._fusion.densities import (
    TemplateDensity,
    exponential_density,
    gaussian_density,
    laplace_density,
    student_t_density,
    uniform_density,
)
from jaxfuse._detection.detect import VideoDetections, detect, detect_videos
from jaxfuse._proposals.detection_file import DetectionFileError, FileFusionReport, fuse_detection_file, fuse_detections_json
from jaxfuse._evaluation.evaluate import (
    ACTIVITYNET_THRESHOLDS,
    THUMOS14_THRESHOLDS,
    DetectionMAP,
    Detections,
    GroundTruth,
    evaluate_detections,
)
from jaxfuse._evaluation.activitynet_json import ActivityNetData, evaluate_json, load_activitynet_json
from jaxfuse._fusion.generic_fit import FitResult, fit_template
from jaxfuse._fusion.fuse_groups import (
    FusionResult,
    compile_count,
    fuse_exponential,
    fuse_gaussian,
    fuse_groups,
    fuse_laplace,
    fuse_student_t,
    fuse_uniform,
)
from jaxfuse._proposals.grouping import ProposalGroups, group_proposals
from jaxfuse._labels.pseudo_labels import PseudoLabels, pseudo_labels
from jaxfuse._proposals.proposal_lists import PaddedProposals, fuse_proposal_lists, pack_proposals, unpack_proposals
from jaxfuse._proposals.fuse_proposals import FusedProposals, fuse_proposals
from jaxfuse._core.settings import (
    DEFAULT,
    PRESETS,
    PUBLISHED,
    PUBLISHED_CLASS_THRESHOLD,
    PUBLISHED_THRESHOLDS,
    FusionSettings,
)
from jaxfuse._core.padding import bucket_size
from jaxfuse._fusion.packing import (
    PackedGroups,
    RaggedBuckets,
    pack_groups,
    pack_ragged,
    unpack_groups,
    unpack_members,
    unpack_ragged,
    unpack_ragged_members,
)
from jaxfuse._fusion.fuse_ragged import RaggedFusion, fuse_ragged
from jaxfuse._core.result_codes import LPResultCode, ResultCode
from jaxfuse._core.version import VERSION
from jaxfuse._labels.snippets import SnippetLabels, segments_to_snippets
from jaxfuse._proposals.sharding import fuse_proposals_sharded, item_mesh
from jaxfuse._fusion.student_t import StudentTParameters
from jaxfuse._fusion.closed_forms import ExponentialParameters, GaussianParameters, LaplaceParameters, UniformParameters
from jaxfuse.tools.videos import SyntheticVideos, VideoParameters, synthetic_videos
from jaxfuse._fusion.weights import member_probabilities

__version__ = VERSION

# The persistent compilation cache is set up at jaxfuse's first call that may compile, not here
# (see jaxfuse/_runtime/compilation_cache.py: ensure_compilation_cache).

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
