namespace Calm.Engine;

/// <summary>What kind of failure a <see cref="CalmException"/> is; the cmdlets map it to a PowerShell ErrorCategory.</summary>
public enum CalmErrorKind
{
    InvalidArgument,
    ObjectNotFound,
    InvalidData,
    NotSupported,
    NotAvailable,
    ResourceUnavailable,
    LimitExceeded,
    InvalidOperation,
    OperationStopped,
    DeviceError,
}

/// <summary>
/// Every failure the engine reports to a user. <see cref="ErrorId"/> is stable (tests and scripts match on it);
/// the message says what was wrong, where, and what to do.
/// </summary>
public class CalmException : Exception
{
    public string ErrorId { get; }
    public CalmErrorKind Kind { get; }
    /// <summary>The file, tensor, parameter or model the error is about, when there is one.</summary>
    public string? Target { get; }

    public CalmException(string errorId, CalmErrorKind kind, string message, string? target = null, Exception? inner = null)
        : base(message, inner)
    {
        ErrorId = errorId;
        Kind = kind;
        Target = target;
    }
}

/// <summary>Stable error ids. Add, never rename.</summary>
public static class ErrorIds
{
    public const string PathNotFound = "Calm.PathNotFound";
    public const string ConfigMissing = "Calm.ConfigMissing";
    public const string ConfigInvalid = "Calm.ConfigInvalid";
    public const string UnsupportedArchitecture = "Calm.UnsupportedArchitecture";
    public const string WeightsMissing = "Calm.WeightsMissing";
    public const string SafetensorsTruncated = "Calm.Safetensors.Truncated";
    public const string SafetensorsHeaderTooLarge = "Calm.Safetensors.HeaderTooLarge";
    public const string SafetensorsHeaderInvalid = "Calm.Safetensors.HeaderInvalid";
    public const string SafetensorsOffsetsInvalid = "Calm.Safetensors.OffsetsInvalid";
    public const string SafetensorsOverlap = "Calm.Safetensors.Overlap";
    public const string SafetensorsUnknownDType = "Calm.Safetensors.UnknownDType";
    public const string SafetensorsSizeMismatch = "Calm.Safetensors.SizeMismatch";
    public const string TensorMissing = "Calm.TensorMissing";
    public const string TensorShapeMismatch = "Calm.TensorShapeMismatch";
    public const string TensorDTypeUnsupported = "Calm.TensorDTypeUnsupported";
    public const string ShardIndexInvalid = "Calm.ShardIndexInvalid";
    public const string ShardPathOutsideModel = "Calm.ShardPathOutsideModel";
    public const string ShardMissing = "Calm.ShardMissing";
    public const string PresetUnknown = "Calm.PresetUnknown";
    public const string PresetTooLarge = "Calm.PresetTooLarge";
    public const string ModelNotFound = "Calm.ModelNotFound";
    public const string NoModelLoaded = "Calm.NoModelLoaded";
    public const string ModelNameInUse = "Calm.ModelNameInUse";
    public const string DeviceNotAvailable = "Calm.DeviceNotAvailable";
    public const string ContextOverflow = "Calm.ContextOverflow";
    public const string TokenOutOfRange = "Calm.TokenOutOfRange";
    public const string InvalidArgument = "Calm.InvalidArgument";
    public const string Cancelled = "Calm.Cancelled";
    public const string OutOfMemory = "Calm.OutOfMemory";
    public const string ModelDisposed = "Calm.ModelDisposed";
    public const string CudaError = "Calm.CudaError";
    public const string KernelCompileFailed = "Calm.KernelCompileFailed";
    public const string TemplateError = "Calm.TemplateError";
    public const string TemplateLimitExceeded = "Calm.TemplateLimitExceeded";
    public const string TemplateMissing = "Calm.TemplateMissing";
    public const string TokenizerUnsupported = "Calm.TokenizerUnsupported";
    public const string TokenizerInvalid = "Calm.TokenizerInvalid";
    public const string TokenizerMissing = "Calm.TokenizerMissing";
    public const string BandwidthUnknown = "Calm.BandwidthUnknown";
    /// <summary>A quantized weight dtype (fp8/int4) that this tensor, source or device cannot take.</summary>
    public const string QuantizationNotSupported = "Calm.QuantizationNotSupported";
    /// <summary>An fp8 weight of a pre-quantized checkpoint without its scale tensor.</summary>
    public const string QuantScaleMissing = "Calm.QuantScaleMissing";
    /// <summary>A scale of a pre-quantized checkpoint that is negative, NaN or infinite.</summary>
    public const string QuantScaleInvalid = "Calm.QuantScaleInvalid";
}
