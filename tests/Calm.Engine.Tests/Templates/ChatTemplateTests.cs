using Calm.Engine;
using Calm.Engine.Templates;

namespace Calm.Engine.Tests.Templates;

public class ChatTemplateTests
{
    private static string R(string tpl, Dictionary<string, object?>? vars = null) =>
        ChatTemplate.Parse(tpl).RenderWith(vars ?? new Dictionary<string, object?>());

    private static CalmException Fails(string tpl, TemplateLimits? limits = null, Dictionary<string, object?>? vars = null)
    {
        var t = ChatTemplate.Parse(tpl);
        if (limits is not null) t = t.With(limits);
        return Assert.Throws<CalmException>(() => t.RenderWith(vars ?? new Dictionary<string, object?>()));
    }

    // ---- outputs known by heart ----

    [Fact]
    public void Qwen25DefaultSystemPromptAndGenerationPrompt()
    {
        var (tpl, _, eos) = TemplateFixtures.Config("qwen2_5");
        var t = ChatTemplate.Parse(tpl);
        string s = t.Render(new[] { new ChatMessage("user", "Hello!") }, true, new Dictionary<string, object?> { ["eos_token"] = eos });
        Assert.Equal("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n" +
                     "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n", s);
    }

    [Fact]
    public void Phi3EndsWithEosWithoutGenerationPrompt()
    {
        var (tpl, bos, eos) = TemplateFixtures.Config("phi3");
        var t = ChatTemplate.Parse(tpl);
        var extra = new Dictionary<string, object?> { ["bos_token"] = bos, ["eos_token"] = eos };
        var msgs = new[] { new ChatMessage("system", "S"), new ChatMessage("user", "U"), new ChatMessage("assistant", "A") };
        Assert.Equal("<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\nA<|end|>\n<|endoftext|>", t.Render(msgs, false, extra));
        Assert.Equal("<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\nA<|end|>\n<|assistant|>\n", t.Render(msgs, true, extra));
    }

    [Fact]
    public void Llama32UsesStrftimeNowWhenNoDateIsGiven()
    {
        var (tpl, bos, _) = TemplateFixtures.Config("llama3_2");
        var t = ChatTemplate.Parse(tpl).With(clock: () => new DateTime(2025, 3, 5, 10, 0, 0));
        string s = t.Render(new[] { new ChatMessage("user", "Hi") }, true, new Dictionary<string, object?> { ["bos_token"] = bos });
        Assert.Equal("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n" +
                     "Today Date: 05 Mar 2025\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
                     "<|start_header_id|>assistant<|end_header_id|>\n\n", s);
    }

    [Fact]
    public void Gemma2RejectsSystemRoleWithTheTemplatesOwnMessage()
    {
        var (tpl, bos, _) = TemplateFixtures.Config("gemma2");
        var t = ChatTemplate.Parse(tpl, "gemma2/tokenizer_config.json");
        var ex = Assert.Throws<CalmException>(() => t.Render(new[] { new ChatMessage("system", "S"), new ChatMessage("user", "U") }, true,
            new Dictionary<string, object?> { ["bos_token"] = bos }));
        Assert.Equal(ErrorIds.TemplateError, ex.ErrorId);
        Assert.Contains("System role not supported", ex.Message);
        Assert.Contains("line 1", ex.Message);
        Assert.Equal("gemma2/tokenizer_config.json", ex.Target);
    }

    [Fact]
    public void Qwen3ThinkingSwitch()
    {
        var (tpl, _, _) = TemplateFixtures.Config("qwen3");
        var t = ChatTemplate.Parse(tpl);
        var msgs = new[] { new ChatMessage("user", "Hi") };
        string off = t.Render(msgs, true, new Dictionary<string, object?> { ["enable_thinking"] = false });
        string on = t.Render(msgs, true);
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", off);
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", on);
    }

    [Fact]
    public void MessageExtraFieldsReachTheTemplate()
    {
        var t = ChatTemplate.Parse("{% for m in messages %}{{ m.role }}:{{ m.content }}:{{ m.reasoning_content | default('-') }}:{{ m.n + 1 }};{% endfor %}");
        var msgs = new[] { new ChatMessage("assistant", "x", new Dictionary<string, object?> { ["reasoning_content"] = "why", ["n"] = 41 }) };
        Assert.Equal("assistant:x:why:42;", t.Render(msgs, false));
    }

    // ---- errors name the line ----

    [Fact]
    public void SyntaxErrorNamesLine()
    {
        var ex = Assert.Throws<CalmException>(() => ChatTemplate.Parse("line one\n{% if x %}\n{% endfor %}\n"));
        Assert.Equal(ErrorIds.TemplateError, ex.ErrorId);
        Assert.Contains("line 3", ex.Message);
    }

    [Theory]
    [InlineData("{{ x ")]
    [InlineData("{% if x %}")]
    [InlineData("{# never closed")]
    [InlineData("{{ 'unterminated }}")]
    [InlineData("{% for %}{% endfor %}")]
    [InlineData("{% include 'other.jinja' %}")]
    [InlineData("{% import 'os' as os %}")]
    [InlineData("{% extends 'base' %}")]
    [InlineData("{{ a b }}")]
    [InlineData("{{ 1 +* 2 }}")]
    public void MalformedTemplatesAreTemplateErrors(string tpl)
    {
        var ex = Assert.Throws<CalmException>(() => ChatTemplate.Parse(tpl));
        Assert.Equal(ErrorIds.TemplateError, ex.ErrorId);
        Assert.Contains("line 1", ex.Message);
    }

    [Fact]
    public void RuntimeErrorNamesLine()
    {
        var ex = Fails("a\nb\n{{ 'a' + 1 }}");
        Assert.Equal(ErrorIds.TemplateError, ex.ErrorId);
        Assert.Contains("line 3", ex.Message);
        Assert.Contains("unsupported operand", ex.Message);
    }

    // ---- sandbox: only plain values, nothing of .NET ----

    [Theory]
    [InlineData("{{ ''.__class__ }}|{{ s.__class__ is defined }}|{{ s.GetType is defined }}|{{ s.Length is defined }}")]
    [InlineData("{{ d.__dict__ }}|{{ d.GetType is defined }}|{{ d.Count is defined }}|{{ l.append is defined }}|{{ l.Add is defined }}|{{ l.Count is defined }}")]
    [InlineData("{{ range.__globals__ }}|{{ namespace.Invoke is defined }}|{{ raise_exception.Method is defined }}|{{ (1).ToString is defined }}|{{ none.GetType is defined }}")]
    [InlineData("{{ environ }}{{ os }}{{ self }}{{ config }}{{ request }}{{ lipsum }}{{ cycler }}{{ joiner }}{{ Environment }}{{ System }}|{{ self is defined }}")]
    public void NoWayToReachDotNetOrTheHost(string tpl)
    {
        var vars = new Dictionary<string, object?> { ["s"] = "x", ["d"] = new Dictionary<string, object?> { ["k"] = 1 }, ["l"] = new object?[] { 1 } };
        string outp = R(tpl, vars);
        Assert.DoesNotContain("True", outp);
        Assert.DoesNotContain("System.", outp);
        Assert.Matches(@"^[|False]*$", outp);
    }

    [Theory]
    [InlineData("{{ s.GetType() }}")]
    [InlineData("{{ s.__class__.__mro__ }}")]
    [InlineData("{% set x = l.append(1) %}")]
    [InlineData("{{ d.Clear() }}")]
    [InlineData("{{ missing.attr }}")]
    [InlineData("{% set l.x = 1 %}")]
    public void ReachingForMembersIsAnErrorNotAnAccess(string tpl)
    {
        var vars = new Dictionary<string, object?> { ["s"] = "x", ["d"] = new Dictionary<string, object?> { ["k"] = 1 }, ["l"] = new object?[] { 1 } };
        var ex = Fails(tpl, vars: vars);
        Assert.Equal(ErrorIds.TemplateError, ex.ErrorId);
    }

    [Fact]
    public void ArbitraryDotNetObjectsCannotBePassedIn()
    {
        var t = ChatTemplate.Parse("{{ x }}");
        var ex = Assert.Throws<CalmException>(() => t.RenderWith(new Dictionary<string, object?> { ["x"] = new FileInfo("/etc/passwd") }));
        Assert.Equal(ErrorIds.InvalidArgument, ex.ErrorId);
        var ex2 = Assert.Throws<CalmException>(() => t.RenderWith(new Dictionary<string, object?> { ["x"] = new object() }));
        Assert.Equal(ErrorIds.InvalidArgument, ex2.ErrorId);
    }

    // ---- bounds ----

    [Theory]
    [InlineData("{% for i in range(100000000) %}{% endfor %}")]
    [InlineData("{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}")]
    [InlineData("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")]
    [InlineData("{% for i in range(50000) %}{{ 'x' * 1000 }}{% endfor %}")]
    [InlineData("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}")]
    [InlineData("{{ 'x' * 10000000000 }}")]
    [InlineData("{{ [1] * 10000000000 }}")]
    [InlineData("{{ 'ab' | indent(1) * 100000000 }}")]
    public void ExceedingABoundIsTemplateLimitExceeded(string tpl)
    {
        var ex = Fails(tpl);
        Assert.Equal(ErrorIds.TemplateLimitExceeded, ex.ErrorId);
        Assert.Equal(CalmErrorKind.LimitExceeded, ex.Kind);
    }

    [Fact]
    public void WallTimeIsBounded()
    {
        var limits = new TemplateLimits { MaxLoopIterations = int.MaxValue, MaxTime = TimeSpan.FromMilliseconds(200) };
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var ex = Fails("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", limits);
        Assert.Equal(ErrorIds.TemplateLimitExceeded, ex.ErrorId);
        Assert.Contains("longer than", ex.Message);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10));
    }

    [Fact]
    public void SmallerLimitsAreHonouredAndTheTemplateStaysUsable()
    {
        var t = ChatTemplate.Parse("{% for i in range(n) %}.{% endfor %}").With(new TemplateLimits { MaxLoopIterations = 10, MaxOutputChars = 100 });
        Assert.Equal("..........", t.RenderWith(new Dictionary<string, object?> { ["n"] = 10 }));
        var ex = Assert.Throws<CalmException>(() => t.RenderWith(new Dictionary<string, object?> { ["n"] = 11 }));
        Assert.Equal(ErrorIds.TemplateLimitExceeded, ex.ErrorId);
        Assert.Equal(".....", t.RenderWith(new Dictionary<string, object?> { ["n"] = 5 }));
    }

    [Fact]
    public void DeepNestingIsAnErrorNotAStackOverflow()
    {
        string deep = "{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}";
        Assert.Equal(ErrorIds.TemplateError, Assert.Throws<CalmException>(() => ChatTemplate.Parse(deep)).ErrorId);
        string deepIf = string.Concat(Enumerable.Repeat("{% if true %}", 3000)) + string.Concat(Enumerable.Repeat("{% endif %}", 3000));
        Assert.Equal(ErrorIds.TemplateError, Assert.Throws<CalmException>(() => ChatTemplate.Parse(deepIf)).ErrorId);
        string notChain = "{{ " + string.Concat(Enumerable.Repeat("not ", 5000)) + "x }}";
        Assert.Equal(ErrorIds.TemplateError, Assert.Throws<CalmException>(() => ChatTemplate.Parse(notChain)).ErrorId);
    }

    [Fact]
    public void FuzzedTemplatesOnlyEverFailWithTemplateErrors()
    {
        var (tpl, _, _) = TemplateFixtures.Config("qwen3");
        var rng = new Random(1234);
        var msgs = new[] { new ChatMessage("system", "s"), new ChatMessage("user", "u"), new ChatMessage("assistant", "<think>r</think>a") };
        var limits = new TemplateLimits { MaxTime = TimeSpan.FromSeconds(1) };
        string alphabet = "{}%#-+()[]'\"|.,:=~!<>*/ \nabcdefijlmnorst0123456789";
        for (int i = 0; i < 400; i++)
        {
            var chars = tpl.ToCharArray();
            int edits = 1 + rng.Next(4);
            for (int e = 0; e < edits; e++) chars[rng.Next(chars.Length)] = alphabet[rng.Next(alphabet.Length)];
            try
            {
                ChatTemplate.Parse(new string(chars)).With(limits).Render(msgs, rng.Next(2) == 0);
            }
            catch (CalmException ex)
            {
                Assert.True(ex.ErrorId is ErrorIds.TemplateError or ErrorIds.TemplateLimitExceeded, ex.ErrorId + ": " + ex.Message);
            }
        }
    }

    // ---- reading from a model folder ----

    private static string TempModel(params (string Name, string Text)[] files)
    {
        var dir = Path.Combine(Path.GetTempPath(), "calm-tpl-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        foreach (var (n, t) in files) File.WriteAllText(Path.Combine(dir, n), t);
        return dir;
    }

    [Fact]
    public void FolderWithStringTemplateAndTokens()
    {
        var dir = TempModel(("tokenizer_config.json",
            "{\"bos_token\": {\"content\": \"<s>\", \"lstrip\": false}, \"eos_token\": \"</s>\", \"chat_template\": \"{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}\"}"));
        try
        {
            var t = ChatTemplate.FromModelFolder(dir);
            Assert.Equal("<s>", t.BosToken);
            Assert.Equal("</s>", t.EosToken);
            Assert.Equal("<s>[user]hi</s>", t.Render(new[] { new ChatMessage("user", "hi") }, false));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void FolderWithNamedTemplatesTakesDefaultOrTheNamedOne()
    {
        var dir = TempModel(("tokenizer_config.json",
            "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, {\"name\": \"default\", \"template\": \"D\"}]}"));
        try
        {
            Assert.Equal("D", ChatTemplate.FromModelFolder(dir).Render(Array.Empty<ChatMessage>(), false));
            Assert.Equal("T", ChatTemplate.FromModelFolder(dir, "tool_use").Render(Array.Empty<ChatMessage>(), false));
            var ex = Assert.Throws<CalmException>(() => ChatTemplate.FromModelFolder(dir, "nope"));
            Assert.Equal(ErrorIds.TemplateMissing, ex.ErrorId);
            Assert.Contains("tool_use", ex.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void ChatTemplateJinjaFileWins()
    {
        var dir = TempModel(("tokenizer_config.json", "{\"eos_token\": \"E\", \"chat_template\": \"old\"}"), ("chat_template.jinja", "new{{ eos_token }}\n"));
        try { Assert.Equal("newE", ChatTemplate.FromModelFolder(dir).Render(Array.Empty<ChatMessage>(), false)); }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void FolderProblemsHaveStableIds()
    {
        var none = TempModel(("tokenizer_config.json", "{\"eos_token\": \"E\"}"));
        var bad = TempModel(("tokenizer_config.json", "{ not json"));
        var badList = TempModel(("tokenizer_config.json", "{\"chat_template\": [1, 2]}"));
        var badSyntax = TempModel(("tokenizer_config.json", "{\"chat_template\": \"{% if %}\"}"));
        try
        {
            Assert.Equal(ErrorIds.TemplateMissing, Assert.Throws<CalmException>(() => ChatTemplate.FromModelFolder(none)).ErrorId);
            Assert.Equal(ErrorIds.ConfigInvalid, Assert.Throws<CalmException>(() => ChatTemplate.FromModelFolder(bad)).ErrorId);
            Assert.Equal(ErrorIds.ConfigInvalid, Assert.Throws<CalmException>(() => ChatTemplate.FromModelFolder(badList)).ErrorId);
            var ex = Assert.Throws<CalmException>(() => ChatTemplate.FromModelFolder(badSyntax));
            Assert.Equal(ErrorIds.TemplateError, ex.ErrorId);
            Assert.Contains("tokenizer_config.json", ex.Message);
            Assert.Equal(ErrorIds.PathNotFound, Assert.Throws<CalmException>(() => ChatTemplate.FromModelFolder(Path.Combine(none, "missing"))).ErrorId);
        }
        finally
        {
            foreach (var d in new[] { none, bad, badList, badSyntax }) Directory.Delete(d, true);
        }
    }

    // ---- value printing details ----

    [Theory]
    [InlineData(0.1, "0.1")]
    [InlineData(1e16, "1e+16")]
    [InlineData(1e-5, "1e-05")]
    [InlineData(123.0, "123.0")]
    [InlineData(-2.5e-7, "-2.5e-07")]
    [InlineData(1234567890123456.0, "1234567890123456.0")]
    [InlineData(0.0001, "0.0001")]
    public void FloatsPrintAsPython(double v, string expected) => Assert.Equal(expected, PyText.FloatRepr(v));
}
