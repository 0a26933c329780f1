using Calm.Engine.Model;
using Calm.Engine.Weights;

namespace Calm.Engine.Cuda;

/// <summary>Quantized synthetic weights made on the GPU (New-CalmModel -DType fp8|int4 -Device Cuda): no host copy.</summary>
public sealed unsafe partial class CudaBackend
{
    /// <summary>
    /// A quantized tensor is either on the host with its scales (int4 needs them; fp8 without scales is read with
    /// scale 1), or device-only with device scales (<see cref="Tensor.HasScales"/>, made by
    /// <see cref="Synthetic.SyntheticWeights.DeviceOnly(ModelConfig, DType)"/>) and a synthetic seed to make it from.
    /// </summary>
    private void CheckQuantizedPlan(Tensor t)
    {
        if (t.IsDeviceOnly)
        {
            if (_synthSeed is null || !t.HasScales)
                throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                    $"{t.Name} is {DTypes.Name(t.DType)} without host values; quantized weights are uploaded from the host (import with -DType) or made on the GPU from a synthetic seed (New-CalmModel -DType).", t.Name);
            if (!DTypes.IsWeightType(Synthetic.SyntheticWeights.QuantizedSourceDType))
                throw new InvalidOperationException("the synthetic source dtype must be f32, f16 or bf16");
            return;
        }
        if (t.DType == DType.Int4 && t.Scales == 0)
            throw new CalmException(ErrorIds.InvalidArgument, CalmErrorKind.InvalidArgument,
                $"{t.Name} is {DTypes.Name(t.DType)} without host scales; quantized weights are uploaded from the host (import with -DType).", t.Name);
    }

    /// <summary>
    /// Fills one device-only quantized part of a matrix (values at <paramref name="values"/>, scales at
    /// <paramref name="scales"/>, the layouts of <see cref="Quant.QuantFormats"/>) with its synthetic values
    /// (<see cref="Synthetic.SyntheticWeights.Layout"/> spec of its name, made at
    /// <see cref="Synthetic.SyntheticWeights.QuantizedSourceDType"/>) quantized as <see cref="Quant.Quantizer"/> does.
    /// A tied classifier's quantized copy carries the embedding's name and so gets the embedding's values.
    /// Asynchronous on the upload stream (Upload synchronizes at the end); progress and cancellation per part.
    /// </summary>
    private void MakeQuantizedSynthetic(Tensor p, ulong values, ulong scales)
    {
        _ct.ThrowIfCancellationRequested();
        var spec = Spec(p);
        if (p.Cols > int.MaxValue)
            throw new CalmException(ErrorIds.TensorShapeMismatch, CalmErrorKind.InvalidData, $"{p.Name}: rows of {p.Cols} elements are too long.", p.Name);
        _k!.QuantizeSynthetic(_stream!, p.DType, values, scales, p.TotalRows, (int)p.Cols,
                              Synthetic.SyntheticWeights.Key(_synthSeed!.Value, spec.TensorId), spec.Scale, spec.Offset,
                              Synthetic.SyntheticWeights.QuantizedSourceDType);
        _uploadDone += p.ByteLength;
        _progress?.Report(new LoadProgress($"Making synthetic weights on {DeviceName}",
            $"{p.Name}: {_uploadDone / 1e9:F2} of {_uploadTotal / 1e9:F2} GB", _uploadTotal == 0 ? 1 : (double)_uploadDone / _uploadTotal));
    }
}
