namespace Calm.Engine.Cuda;

/// <summary>
/// A failed CUDA driver or NVRTC call (ErrorId Calm.CudaError): carries the call, the status code, its name
/// (cuGetErrorName) and description (cuGetErrorString).
/// </summary>
public sealed class CudaException : CalmException
{
    public string Call { get; }
    public int Code { get; }
    public string CodeName { get; }

    internal CudaException(string call, int code, string codeName, string description)
        : base(ErrorIds.CudaError, CalmErrorKind.DeviceError,
               $"CUDA call {call} failed with {codeName}{(description.Length > 0 ? ": " + description : "")}. " +
               "The GPU state may be unusable; Remove-CalmModel and load the model again, or restart the session.", call)
    {
        Call = call; Code = code; CodeName = codeName;
    }

    /// <summary>Throws when <paramref name="result"/> is not CUDA_SUCCESS.</summary>
    internal static void Check(int result, string call)
    {
        if (result == Cu.CUDA_SUCCESS) return;
        if (result == Cu.CUDA_ERROR_OUT_OF_MEMORY)
            throw new CalmException(ErrorIds.OutOfMemory, CalmErrorKind.ResourceUnavailable,
                $"The GPU ran out of memory in {call} ({Cu.ErrorName(result)}). Free GPU memory (Remove-CalmModel) or use a smaller model or context.", call);
        throw new CudaException(call, result, Cu.ErrorName(result), Cu.ErrorString(result));
    }
}
