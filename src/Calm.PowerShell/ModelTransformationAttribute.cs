using System.Management.Automation;
using Calm.Engine.Session;

namespace Calm.PowerShell;

/// <summary>
/// Lets a -Model parameter take a CalmModel, a model name, or any object with a Name property (Import-Csv rows).
/// A name that matches no loaded model becomes an unresolved reference, so the cmdlet reports Calm.ModelNotFound
/// (a stable id) instead of a parameter-binding error.
/// </summary>
[AttributeUsage(AttributeTargets.Property | AttributeTargets.Field)]
public sealed class ModelTransformationAttribute : ArgumentTransformationAttribute
{
    public override object? Transform(EngineIntrinsics engineIntrinsics, object? inputData)
    {
        if (inputData is object[] array) return array.Select(One).ToArray();
        if (inputData is PSObject { BaseObject: object[] inner }) return inner.Select(One).ToArray();
        return One(inputData);
    }

    private static object? One(object? input)
    {
        var value = input is PSObject pso ? pso.BaseObject : input;
        switch (value)
        {
            case null: return null;
            case CalmModel m: return m;
            case LoadedModel lm: return CalmModel.From(lm);
            case string s: return ByName(s);
        }
        // A row from Import-Csv or a custom object: its Name property.
        if (input is PSObject wrapped && wrapped.Properties["Name"]?.Value is object n)
            return ByName(n.ToString() ?? "");
        throw new ArgumentTransformationMetadataException(
            $"Cannot use a {value.GetType().Name} as a model. Pass a model from Get-CalmModel or its name.");
    }

    private static CalmModel ByName(string name)
        => CalmSession.Shared.Find(name) is { } m ? CalmModel.From(m) : CalmModel.Unresolved(name);
}
