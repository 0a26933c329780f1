using Calm.Engine.Model;
using Calm.Engine.Weights;
namespace Calm.Engine.Synthetic;
public static class SyntheticWeights
{
    public static (ModelWeights, WeightStore) Build(ModelConfig config, int seed, IProgress<LoadProgress>? progress, CancellationToken ct) => throw new NotImplementedException();
}
