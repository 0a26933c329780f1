using Calm.Engine.Model;

namespace Calm.Engine.Tests;

public class SmokeTests
{
    [Fact]
    public void ConfigValidationRejectsHeadsThatDoNotDivide()
    {
        var c = new ModelConfig
        {
            Architecture = Architecture.Llama, ModelType = "llama", VocabSize = 10, HiddenSize = 8, IntermediateSize = 16,
            NumLayers = 1, NumHeads = 3, NumKvHeads = 2, HeadDim = 4, MaxPositionEmbeddings = 16,
        };
        var ex = Assert.Throws<CalmException>(() => c.Validate("test"));
        Assert.Equal(ErrorIds.ConfigInvalid, ex.ErrorId);
    }
}
