using System.Text.Json;
using Calm.Engine;
using Calm.Engine.Templates;

namespace Calm.Engine.Tests.Templates;

/// <summary>Finds tests/fixtures/templates from the test binary's folder.</summary>
internal static class TemplateFixtures
{
    public static string Dir { get; } = Find();

    private static string Find()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            var p = Path.Combine(d.FullName, "tests", "fixtures", "templates");
            if (Directory.Exists(p)) return p;
        }
        throw new DirectoryNotFoundException("tests/fixtures/templates not found above " + AppContext.BaseDirectory);
    }

    public static JsonElement Load(string file)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, file)));
        return doc.RootElement.Clone();
    }

    public static (string Template, string? Bos, string? Eos) Config(string name)
    {
        var cfg = Load(name + ".json");
        return (cfg.GetProperty("chat_template").GetString()!, cfg.GetProperty("bos_token").GetString(), cfg.GetProperty("eos_token").GetString());
    }

    /// <summary>Renders one reference case: simple conversations go in as ChatMessages, richer ones as JSON messages.</summary>
    public static string RenderCase(JsonElement c)
    {
        var (tpl, bos, eos) = Config(c.GetProperty("template").GetString()!);
        var t = ChatTemplate.Parse(tpl, c.GetProperty("template").GetString());
        var extra = new Dictionary<string, object?>
        {
            ["bos_token"] = bos,
            ["eos_token"] = eos,
        };
        foreach (var p in c.GetProperty("extra").EnumerateObject()) extra[p.Name] = p.Value;
        var msgs = c.GetProperty("messages");
        var list = new List<ChatMessage>();
        bool simple = msgs.EnumerateArray().All(m => m.EnumerateObject().Count() == 2
            && m.TryGetProperty("role", out _) && m.TryGetProperty("content", out var ct) && ct.ValueKind == JsonValueKind.String);
        if (simple)
            foreach (var m in msgs.EnumerateArray()) list.Add(new ChatMessage(m.GetProperty("role").GetString()!, m.GetProperty("content").GetString()));
        else extra["messages"] = msgs;
        return t.Render(list, c.GetProperty("add_generation_prompt").GetBoolean(), extra);
    }
}

/// <summary>
/// The six real chat templates against reference renderings. refs.json is made by transformers itself on the GPU
/// machine (tools/make_template_refs.py); refs_jinja2.json by jinja2 3.1.6 set up exactly as transformers sets it up
/// (same script, --jinja-only), so the check runs before refs.json exists.
/// </summary>
public class TemplateReferenceTests
{
    public static IEnumerable<TheoryDataRow<string, int>> Cases()
    {
        foreach (var file in new[] { "refs.json", "refs_jinja2.json" })
        {
            var path = Path.Combine(TemplateFixtures.Dir, file);
            if (!File.Exists(path)) { yield return new TheoryDataRow<string, int>(file, -1); continue; }
            int n = TemplateFixtures.Load(file).GetProperty("cases").GetArrayLength();
            for (int i = 0; i < n; i++) yield return new TheoryDataRow<string, int>(file, i);
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void RealTemplateMatchesReference(string file, int index)
    {
        if (index < 0)
            Assert.Skip($"{file} has not been generated yet: run `python3 tools/make_template_refs.py tests/fixtures/templates $OUT/refs.json` on the GPU machine and commit it as tests/fixtures/templates/{file}.");
        var c = TemplateFixtures.Load(file).GetProperty("cases")[index];
        string label = c.GetProperty("template").GetString() + "/" + c.GetProperty("id").GetString();
        if (c.TryGetProperty("error", out var err))
        {
            var ex = Assert.Throws<CalmException>(() => TemplateFixtures.RenderCase(c));
            Assert.Equal(ErrorIds.TemplateError, ex.ErrorId);
            Assert.Contains(err.GetString()!, ex.Message);
            return;
        }
        string expected = c.GetProperty("expected").GetString()!;
        string actual = TemplateFixtures.RenderCase(c);
        Assert.True(expected == actual, $"{label}: rendering differs\n--- expected ---\n{expected}\n--- actual ---\n{actual}");
    }

    [Fact]
    public void ReferenceFilesCoverAllSixTemplates()
    {
        var c = TemplateFixtures.Load("refs_jinja2.json").GetProperty("cases");
        var names = c.EnumerateArray().Select(x => x.GetProperty("template").GetString()).ToHashSet();
        Assert.Equal(new[] { "gemma2", "llama3_2", "mistral_nemo", "phi3", "qwen2_5", "qwen3" }, names.OrderBy(x => x).ToArray());
    }
}

/// <summary>Jinja2 language cases whose expected output came from real jinja2 (tools/template_language_cases.py).</summary>
public class TemplateLanguageTests
{
    public static IEnumerable<TheoryDataRow<int>> Cases()
    {
        int n = TemplateFixtures.Load("language_cases.json").GetProperty("cases").GetArrayLength();
        for (int i = 0; i < n; i++) yield return new TheoryDataRow<int>(i);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesJinja2(int index)
    {
        var root = TemplateFixtures.Load("language_cases.json");
        var c = root.GetProperty("cases")[index];
        string tpl = c.GetProperty("template").GetString()!;
        var vars = root.GetProperty("vars").EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value);
        if (c.TryGetProperty("error", out _))
        {
            var ex = Assert.Throws<CalmException>(() => ChatTemplate.Parse(tpl).RenderWith(vars));
            Assert.Equal(ErrorIds.TemplateError, ex.ErrorId);
            Assert.Contains("line 1", ex.Message);
            return;
        }
        string expected = c.GetProperty("expected").GetString()!;
        string actual = ChatTemplate.Parse(tpl).RenderWith(vars);
        Assert.True(expected == actual, $"template: {tpl}\n--- expected ---\n{expected}\n--- actual ---\n{actual}");
    }
}
