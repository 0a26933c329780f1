using System.Management.Automation;
using Calm.Engine;

namespace Calm.PowerShell;

/// <summary>Turns engine failures into ErrorRecords with stable ids: ErrorId = CalmException.ErrorId.</summary>
public static class CalmErrors
{
    /// <summary>Id of the record for a failure Calm did not expect (a bug): the message, never a stack trace.</summary>
    public const string InternalErrorId = "Calm.InternalError";

    public static ErrorCategory Category(CalmErrorKind kind) => kind switch
    {
        CalmErrorKind.InvalidArgument => ErrorCategory.InvalidArgument,
        CalmErrorKind.ObjectNotFound => ErrorCategory.ObjectNotFound,
        CalmErrorKind.InvalidData => ErrorCategory.InvalidData,
        CalmErrorKind.NotSupported => ErrorCategory.NotImplemented,
        CalmErrorKind.NotAvailable => ErrorCategory.ResourceUnavailable,
        CalmErrorKind.ResourceUnavailable => ErrorCategory.ResourceUnavailable,
        CalmErrorKind.LimitExceeded => ErrorCategory.LimitsExceeded,
        CalmErrorKind.InvalidOperation => ErrorCategory.InvalidOperation,
        CalmErrorKind.OperationStopped => ErrorCategory.OperationStopped,
        CalmErrorKind.DeviceError => ErrorCategory.DeviceError,
        _ => ErrorCategory.NotSpecified,
    };

    /// <summary>What to do next, per error id (shown by Get-Error and $err.ErrorDetails.RecommendedAction).</summary>
    public static string RecommendedAction(CalmException ex) => ex.ErrorId switch
    {
        ErrorIds.PathNotFound => "Check the path; Import-CalmModel takes the folder that holds config.json and the *.safetensors files.",
        ErrorIds.ConfigMissing or ErrorIds.ConfigInvalid => "Use a model folder saved by Hugging Face transformers (save_pretrained), with a complete config.json.",
        ErrorIds.UnsupportedArchitecture => "Use a model of a supported family: llama, mistral, qwen2, qwen3, gemma, phi3, mixtral.",
        ErrorIds.WeightsMissing or ErrorIds.ShardMissing => "Download the model's *.safetensors files into the folder again.",
        ErrorIds.SafetensorsTruncated or ErrorIds.SafetensorsHeaderTooLarge or ErrorIds.SafetensorsHeaderInvalid
            or ErrorIds.SafetensorsOffsetsInvalid or ErrorIds.SafetensorsOverlap or ErrorIds.SafetensorsSizeMismatch
            => "The file is damaged or incomplete: download it again.",
        ErrorIds.SafetensorsUnknownDType or ErrorIds.TensorDTypeUnsupported => "Use a model stored in bf16, f16 or f32, or an fp8 checkpoint with a scale beside each fp8 weight.",
        ErrorIds.QuantizationNotSupported => "Use the unquantized (bf16/f16/f32) model and Import-CalmModel -DType fp8 or int4, or an fp8 checkpoint (compressed-tensors, fp8, fbgemm_fp8).",
        ErrorIds.QuantScaleMissing or ErrorIds.QuantScaleInvalid => "The fp8 checkpoint's scales are missing or damaged: download the model folder again.",
        ErrorIds.TensorMissing or ErrorIds.TensorShapeMismatch => "The weights do not match config.json: use the files and config.json of one model.",
        ErrorIds.ShardIndexInvalid or ErrorIds.ShardPathOutsideModel => "model.safetensors.index.json must name shard files inside the model folder.",
        ErrorIds.PresetUnknown => "Tab-complete -Preset to see the preset names.",
        ErrorIds.PresetTooLarge => "Choose a smaller preset or -DType, or free memory.",
        ErrorIds.ModelNotFound or ErrorIds.NoModelLoaded or ErrorIds.ModelDisposed => "Run Get-CalmModel to see the loaded models; load one with Import-CalmModel or New-CalmModel.",
        ErrorIds.ModelNameInUse => "Choose another -Name, or Remove-CalmModel the loaded model first.",
        ErrorIds.DeviceNotAvailable => "Use -Device Cpu (or Auto); Get-CalmDevice lists the devices Calm can use.",
        ErrorIds.OutOfMemory => "Free memory (Remove-CalmModel), or use a smaller model, dtype or -ContextLength.",
        ErrorIds.ContextOverflow => "Use a larger -ContextLength or a shorter prompt.",
        ErrorIds.Cancelled => "Run the command again when you are ready.",
        _ => "Check the message above; it says what was wrong and where.",
    };

    public static ErrorRecord FromCalm(CalmException ex, object? target = null)
    {
        var record = new ErrorRecord(ex, ex.ErrorId, Category(ex.Kind), ex.Target ?? target);
        record.ErrorDetails = new ErrorDetails(ex.Message) { RecommendedAction = RecommendedAction(ex) };
        return record;
    }

    /// <summary>A failure Calm did not expect: one line naming it, no stack trace; the original is the inner exception.</summary>
    public static ErrorRecord Internal(Exception ex, object? target = null)
    {
        var wrapped = new InvalidOperationException(
            $"Calm internal error ({ex.GetType().Name}): {ex.Message} Please report this with the command you ran.", ex);
        var record = new ErrorRecord(wrapped, InternalErrorId, ErrorCategory.NotSpecified, target);
        record.ErrorDetails = new ErrorDetails(wrapped.Message) { RecommendedAction = "Report the command and this message to the Calm developers." };
        return record;
    }
}
