using Calm.Engine.Model;
namespace Calm.Engine.Synthetic;
public static class Presets
{
    public static ModelConfig Get(string name) => throw new NotImplementedException();
    public static string Canonical(string name) => name;
}
