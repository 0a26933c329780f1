using System.Collections;
using System.Management.Automation;
using System.Management.Automation.Language;
using System.Reflection;
using Calm.Engine.Session;

namespace Calm.PowerShell;

internal static class Completion
{
    /// <summary>Completions for the candidates that start with what was typed (case-insensitive), quoted when needed.</summary>
    public static IEnumerable<CompletionResult> Matching(string wordToComplete, IEnumerable<(string Value, string Tip)> candidates)
    {
        var typed = (wordToComplete ?? "").Trim('\'', '"');
        foreach (var (value, tip) in candidates)
        {
            if (!value.StartsWith(typed, StringComparison.OrdinalIgnoreCase)) continue;
            var text = value.Any(c => char.IsWhiteSpace(c) || "'\"`$;,(){}[]&|<>@#".Contains(c))
                ? "'" + value.Replace("'", "''") + "'"
                : value;
            yield return new CompletionResult(text, value, CompletionResultType.ParameterValue, tip);
        }
    }
}

/// <summary>-Preset: the synthetic presets the engine knows.</summary>
public sealed class PresetCompleter : IArgumentCompleter
{
    // Shown until the engine's Presets exposes its list (a static Names/All property of strings is picked up).
    private static readonly string[] s_known = { "tiny", "Llama-3.2-1B", "Llama-3-8B", "Mistral-7B", "Mixtral-8x7B", "Qwen2.5-7B", "Phi-3-mini" };

    public static IReadOnlyList<string> PresetNames()
    {
        var t = typeof(Calm.Engine.Synthetic.Presets);
        foreach (var name in new[] { "Names", "All", "AllNames" })
        {
            object? v = t.GetProperty(name, BindingFlags.Public | BindingFlags.Static)?.GetValue(null)
                        ?? t.GetField(name, BindingFlags.Public | BindingFlags.Static)?.GetValue(null);
            if (v is IEnumerable<string> names) return names.ToArray();
            if (v is IDictionary dict) return dict.Keys.Cast<object>().Select(k => k.ToString()!).ToArray();
        }
        return s_known;
    }

    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
        => Completion.Matching(wordToComplete, PresetNames().Select(n => (n, $"Synthetic model preset {n}")));
}

/// <summary>-Model / -Name: the loaded models.</summary>
public sealed class ModelNameCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
        => Completion.Matching(wordToComplete, CalmSession.Shared.Models.Select(m =>
            (m.Name, $"{m.Name}: {m.Config.ModelType}, {m.Config.NumLayers} layers, {Calm.Engine.Model.DTypes.Name(m.DType)}, {m.DeviceKind}")));
}

/// <summary>-Device: Auto, Cpu, Cuda.</summary>
public sealed class DeviceCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
        => Completion.Matching(wordToComplete, new[]
        {
            ("Auto", "The GPU when there is one, else the CPU"),
            ("Cpu", "The CPU reference backend"),
            ("Cuda", "An NVIDIA GPU through CUDA"),
        });
}

/// <summary>-DType: bf16, f16, f32.</summary>
public sealed class DTypeCompleter : IArgumentCompleter
{
    internal static readonly (string, string)[] FloatTypes =
    {
        ("bf16", "bfloat16, 2 bytes per weight"),
        ("f16", "IEEE half, 2 bytes per weight"),
        ("f32", "float, 4 bytes per weight"),
    };

    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
        => Completion.Matching(wordToComplete, FloatTypes);
}

/// <summary>-KvCacheDType of Import-CalmModel, New-CalmModel and Measure-CalmSpeedOfLight: f16, fp8.</summary>
public sealed class KvCacheDTypeCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
        => Completion.Matching(wordToComplete, Calm.Engine.Model.KvCacheTypes.Choices);
}

/// <summary>-DType of Import-CalmModel and New-CalmModel: bf16, f16, f32 and the quantized fp8, int4.</summary>
public sealed class WeightDTypeCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
        => Completion.Matching(wordToComplete, DTypeCompleter.FloatTypes.Concat(new[]
        {
            ("fp8", "e4m3 with one fp32 scale per output row, 1 byte per weight (quantized at import)"),
            ("int4", "4-bit with one fp16 scale per 32 weights, 0.5625 bytes per weight (quantized at import)"),
        }));
}
