"""`LFQLayer`: lookup-free quantization as a Keras 3 layer (TensorFlow backend).

The layer builds one `lfq.Config` from its arguments (the names of
vector-quantize-pytorch's LFQ, shared with lfq's torch and JAX modules) and
calls the TensorFlow backend's functional `lfq`; it adds what a model needs:
optional learned projections, Keras's image data format (channels-last by default), the aux loss
through `add_loss`, code-usage metrics, and the global-batch entropy under
`tf.distribute`.

    layer = LFQLayer(codebook_size=2**10, dim=64)
    quantized, indices, aux_loss = layer(x, training=True)   # x: [b, n, 64]
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import keras
import tensorflow as tf

import lfq
from lfq.config import Config
from lfq.layer_options import (
    LAYER_ARGUMENTS,
    LayerArgument,
    arguments,
    bind,
    document,
    mask_layout,
    resolve,
    schedule_options,
    signature,
)

__all__ = ["KERAS_ARGUMENTS", "LFQLayer", "LFQLayerOutput", "LossBreakdown", "batch_code_usage"]

_HALF = (tf.float16, tf.bfloat16)


class LFQLayerOutput(NamedTuple):
    """What `LFQLayer` returns.

    Attributes:
        quantized: the codes (straight-through), projected back to `dim` when the
            layer has projections, in the input's layout and compute dtype.
        indices: int64 token indices, `[..., C]` (`[...]` when the codebook axis
            is dropped, see `keep_num_codebooks_dim`).
        aux_loss: scalar in the layer's variable dtype; 0 when no loss is computed.
    """

    quantized: Any
    indices: Any
    aux_loss: Any


class LossBreakdown(NamedTuple):
    """The unweighted terms of the aux loss (scalars; 0 when no loss is computed)."""

    per_sample_entropy: Any
    batch_entropy: Any
    commitment: Any


def batch_code_usage(indices, cfg: Config, mask=None):
    """Fraction of codes used and perplexity of a batch of indices, in-graph.

    The same numbers as `lfq.reference.code_usage`, computed with a sort (any D,
    no 2**D histogram; XLA-compatible): masked-out tokens get index -1, the
    sorted indices form runs of equal values, and the runs' valid-token counts
    give the histogram of the codes that occur.

    Args:
        indices: int `[..., C]`.
        cfg: the configuration (C and D).
        mask: optional bool `[...]`; only True tokens count.

    Returns:
        `(fraction_used, perplexity)`, float32 `[C]` each; with no valid token
        0 and 1.
    """
    c = cfg.num_codebooks
    keys = tf.transpose(tf.reshape(tf.cast(indices, tf.int64), [-1, c]))  # [C, N]
    if mask is not None:
        keys = tf.where(tf.reshape(mask, [1, -1]), keys, tf.constant(-1, tf.int64))
    keys = tf.sort(keys, axis=-1)
    n = tf.shape(keys)[1]
    starts = tf.concat([tf.ones([c, 1], tf.int32), tf.cast(keys[:, 1:] != keys[:, :-1], tf.int32)], axis=1)
    # Run ids, offset per codebook so that one segment sum serves every codebook.
    runs = tf.cumsum(starts, axis=1) - 1 + tf.range(c)[:, None] * n
    valid = tf.cast(keys >= 0, tf.float32)
    counts = tf.reshape(tf.math.unsorted_segment_sum(valid, runs, c * n), [c, -1])  # [C, N]
    total = tf.reduce_sum(counts, axis=1, keepdims=True)
    p = counts / tf.maximum(total, 1.0)
    entropy = -tf.reduce_sum(tf.where(p > 0, p * tf.math.log(tf.where(p > 0, p, 1.0)), 0.0), axis=1)
    used = tf.reduce_sum(tf.cast(counts > 0, tf.float32), axis=1) / float(cfg.codebook_size)
    return used, tf.exp(entropy)


#: The Keras layer's own arguments (beside `lfq.layer_options.LAYER_ARGUMENTS`).
KERAS_ARGUMENTS = (
    LayerArgument(
        "sync_replicas",
        True,
        "under `tf.distribute` (replica context, more than one replica), compute the losses over the global batch.",
        "bool",
    ),
    LayerArgument(
        "track_code_usage",
        True,
        "update the metrics `<name>_code_usage` (fraction of codes used per batch) and `<name>_perplexity`, "
        "averaged over codebooks and batches; per replica under `tf.distribute`.",
        "bool",
    ),
)

_CHANNEL_FIRST = dataclasses.replace(
    arguments("channel_first")[0],
    doc="None (default) follows Keras's `keras.config.image_data_format()`, read when the layer is constructed "
    'as for Keras\'s convolutions: "channels_last" (Keras\'s default) reads every input `[b, ..., dim]`, '
    '"channels_first" every input `[b, dim, ...]`. True/False forces the layout; `get_config` records '
    "the layout chosen.",
)
_ARGUMENTS = tuple(_CHANNEL_FIRST if a.name == "channel_first" else a for a in LAYER_ARGUMENTS) + KERAS_ARGUMENTS
_SIGNATURE = signature(_ARGUMENTS, var_keyword="kwargs", self_=True)


@keras.saving.register_keras_serializable(package="lfq")
@document(_ARGUMENTS)
class LFQLayer(keras.layers.Layer):
    """Lookup-free quantization (MAGVIT-v2 LFQ) for Keras 3 on TensorFlow.

    Its arguments (keywords only) are those of every framework's layer,
    declared once in `lfq.layer_options.LAYER_ARGUMENTS`, then its own. The
    layout follows Keras: channels-last unless `keras.config.image_data_format()`
    is "channels_first" (or `channel_first=True`).

    Args:
        **kwargs: `keras.layers.Layer` arguments (name, dtype, ...).

    Call arguments:
        x: `[b, ..., dim]`, or `[b, dim, ...]` when channel-first.
        mask: optional bool, `x`'s shape without the feature axis, per token
            flattened (`[b, h*w]`) or per sample (`[b]`); masked-out tokens are
            quantized but count in no loss.
            A Keras mask of an upstream layer arrives here too, and is passed on
            to `quantized` and `indices`.
        training: Keras's flag; the loss is computed (and added with `add_loss`)
            only when training, or when `compute_loss=True`.
        return_loss_breakdown: also return a `LossBreakdown` (None: the
            constructor's default).
        compute_loss: compute and add the loss in inference too.
        inv_temperature: this call's tau (a float, or a 0-d tensor / `tf.Variable`
            that a schedule updates without retracing); None = the layer's.
        entropy_loss_weight: this call's entropy weight (as `inv_temperature`).
        commitment_loss_weight: this call's commitment weight (as `inv_temperature`).
        diversity_gamma: this call's gamma (as `inv_temperature`).

    Returns:
        `LFQLayerOutput(quantized, indices, aux_loss)`, or
        `(LFQLayerOutput, LossBreakdown)` when the breakdown is asked for.
    """

    def __init__(self, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"LFQLayer runs on Keras's TensorFlow backend, but KERAS_BACKEND is "
                f"{keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow (lfq's JAX and torch "
                "backends have their own modules)"
            )
        values, rest = bind(_SIGNATURE, kwargs, "LFQLayer")
        super().__init__(**rest)
        if values["channel_first"] is None:  # Keras's convention, as Conv2D(data_format=None)
            values["channel_first"] = keras.config.image_data_format() == "channels_first"
        self._config = values  # get_config's dict: every argument (channel_first resolved)
        self.options = resolve(values)
        self.cfg, self.dim = self.options.config, self.options.dim
        self.has_projections = self.options.has_projections
        self.channel_first = values["channel_first"]
        self.keep_num_codebooks_dim = self.options.keep_num_codebooks_dim
        features = self.cfg.num_features
        self.return_loss_breakdown = values["return_loss_breakdown"]
        self.sync_replicas = values["sync_replicas"]
        self.track_code_usage = values["track_code_usage"]
        self._backend = lfq.get("tensorflow")
        # A Keras mask from upstream layers (Embedding(mask_zero=True), Masking) arrives
        # as `mask` and then excludes padding tokens from the losses; it is passed on.
        self.supports_masking = True
        if self.has_projections:
            self.project_in = keras.layers.Dense(
                features, use_bias=values["projection_has_bias"], dtype=self.dtype_policy, name="project_in"
            )
            self.project_out = keras.layers.Dense(
                self.dim, use_bias=values["projection_has_bias"], dtype=self.dtype_policy, name="project_out"
            )
        if self.track_code_usage:
            self.code_usage_metric = keras.metrics.Mean(name=f"{self.name}_code_usage")
            self.perplexity_metric = keras.metrics.Mean(name=f"{self.name}_perplexity")

    __init__.__signature__ = _SIGNATURE  # type: ignore[attr-defined]  # help() shows the table's arguments

    # ------------------------------------------------------------------ layout

    def _is_channel_first(self, rank: int) -> bool:
        return self.options.is_channel_first(rank)

    def _channels_last_shape(self, input_shape) -> tuple:
        shape = tuple(input_shape)
        if len(shape) < 2:
            raise ValueError(
                f"LFQLayer input has shape {shape}: it needs a batch axis and a feature axis of size dim={self.dim}"
            )
        if self._is_channel_first(len(shape)):
            shape = (shape[0],) + shape[2:] + (shape[1],)
        if shape[-1] is not None and shape[-1] != self.dim:
            axis = 1 if self._is_channel_first(len(input_shape)) else -1
            raise ValueError(
                f"LFQLayer input has shape {tuple(input_shape)}: expected dim={self.dim} features on "
                f"axis {axis} ({'channel-first' if axis == 1 else 'channel-last'}); pass dim= to "
                "project, or channel_first= to choose the layout"
            )
        return shape

    def build(self, input_shape):
        shape = self._channels_last_shape(input_shape)
        if self.has_projections:
            self.project_in.build(shape)
            self.project_out.build(shape[:-1] + (self.cfg.num_features,))

    # -------------------------------------------------------------------- call

    def _replica_options(self) -> dict:
        context = tf.distribute.get_replica_context() if self.sync_replicas else None
        if context is None or context.num_replicas_in_sync == 1:
            return {}
        return {"replica_context": context}

    def call(
        self,
        x,
        mask=None,
        training=None,
        return_loss_breakdown=None,
        compute_loss=False,
        inv_temperature=None,
        entropy_loss_weight=None,
        commitment_loss_weight=None,
        diversity_gamma=None,
    ):
        channel_first = self._is_channel_first(x.shape.rank)
        self._channels_last_shape(x.shape)
        if channel_first:
            x = tf.experimental.numpy.moveaxis(x, 1, -1)
        if mask is not None:  # vector-quantize-pytorch's layouts: per sample [b], flattened [b, h*w]
            tokens = tuple(x.shape[:-1])
            if tuple(mask.shape) != tokens and None not in tokens:
                mask = tf.broadcast_to(tf.reshape(mask, mask_layout(mask.shape, tokens)), tokens)
        schedule = schedule_options(
            inv_temperature=inv_temperature,
            entropy_loss_weight=entropy_loss_weight,
            commitment_loss_weight=commitment_loss_weight,
            diversity_gamma=diversity_gamma,
        )
        z = self.project_in(x) if self.has_projections else x
        be, cfg = self._backend, self.cfg
        if training or compute_loss:
            # Half inputs: losses from float32 features, so that the aux loss and its
            # gradient keep float32 resolution; the codes' value stays the half-precision
            # quantization of z, bitwise.
            half = z.dtype in _HALF
            out = be.lfq(tf.cast(z, tf.float32) if half else z, cfg, mask, **schedule, **self._replica_options())
            codes = be.pass_gradient(be.quantize(z, cfg), tf.cast(out.codes, z.dtype)) if half else out.codes
            indices = out.indices
            aux_loss = tf.cast(out.aux_loss, self.dtype)
            breakdown = LossBreakdown(
                *(tf.cast(v, self.dtype) for v in (out.per_sample_entropy, out.batch_entropy, out.commitment_loss))
            )
            self.add_loss(aux_loss)
        else:
            codes = be.straight_through(z, cfg)
            indices = be.codes_to_indices(z, cfg)
            aux_loss = tf.zeros([], self.dtype)
            breakdown = LossBreakdown(aux_loss, aux_loss, aux_loss)
        if self.track_code_usage:
            used, perplexity = batch_code_usage(indices, cfg, mask)
            self.code_usage_metric.update_state(tf.reduce_mean(used))
            self.perplexity_metric.update_state(tf.reduce_mean(perplexity))
        quantized = self.project_out(codes) if self.has_projections else codes
        if channel_first:
            quantized = tf.experimental.numpy.moveaxis(quantized, -1, 1)
        if not self.keep_num_codebooks_dim:
            indices = indices[..., 0]
        result = LFQLayerOutput(quantized, indices, aux_loss)
        if return_loss_breakdown is None:
            return_loss_breakdown = self.return_loss_breakdown
        return (result, breakdown) if return_loss_breakdown else result

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "savedmodel" and self.track_code_usage:
            # A traced call updates the metrics' variables; Keras does not list metrics as
            # trackable children, so tf.saved_model.save would refuse the functions that
            # capture them ("untracked resource"). Checkpoints keep Keras's children.
            for attribute in ("code_usage_metric", "perplexity_metric"):
                for variable in getattr(self, attribute).variables:
                    children[f"{attribute}_{variable.name}"] = variable
        return children

    def compute_mask(self, inputs, mask=None):
        """The token mask of `quantized` and `indices` (the aux loss has none)."""
        return None if mask is None else LFQLayerOutput(mask, mask, None)

    def indices_to_codes(self, indices, project_out: bool = True):
        """Codes of `indices` in the input layout, projected back to `dim` when asked.

        Args:
            indices: int `[b, ..., C]`, or `[b, ...]` when the layer drops the
                codebook axis (`keep_num_codebooks_dim`).
            project_out: apply `project_out` when the layer has projections.

        Returns:
            `[b, ..., dim]` (or `[b, dim, ...]` for channel-first images and
            video), in the layer's compute dtype.
        """
        indices = tf.convert_to_tensor(indices)
        if not self.keep_num_codebooks_dim:
            indices = indices[..., None]
        codes = self._backend.indices_to_codes(indices, self.cfg, dtype=self.compute_dtype)
        if project_out and self.has_projections:
            codes = self.project_out(codes)
        if self._is_channel_first(codes.shape.rank):
            codes = tf.experimental.numpy.moveaxis(codes, -1, 1)
        return codes

    def get_config(self):
        return {**super().get_config(), **self._config}
