"""``sapray plan``'s console lines."""

from __future__ import annotations

from sapray.core.costs import Figure


def render(plan: dict) -> str:
    """The plan as console lines."""
    def figure(d: dict) -> str:
        return Figure(**d).show()

    lines = [f"plan for sapray {plan['job']}: target {plan['model']} ({plan['engine']})",
             f"  strategies      {figure(plan['strategies']['count'])}: {', '.join(plan['strategies']['names'])}",
             f"  questions       {figure(plan['questions'])}",
             f"  exemplars       {plan['exemplars']['source']}: "
             f"generation {figure(plan['exemplars']['generated_tokens'])}"
             + (f"; {figure(plan['exemplars']['time'])}" if "time" in plan["exemplars"] else ""),
             f"  scoring         {figure(plan['scoring']['requests'])}",
             f"                  {figure(plan['scoring']['tokens'])}",
             *(f"                  round {k}: {figure(r)}" for k, r in enumerate(plan['scoring']['rounds'], 1)),
             f"                  {figure(plan['scoring']['time'])}",
             *([f"  data plane      {figure(plan['scoring']['data_plane'])}"] if "data_plane" in plan["scoring"]
               else [])]
    for name, g in plan["sample_generation"].items():
        lines.append(f"  sample {name} ({g['teacher']}): prompts {figure(g['prompt_tokens'])}; answers "
                     f"{figure(g['generated_tokens'])}" + (f"; {figure(g['money'])}" if g["money"] else "")
                     + (f"; {figure(g['time'])}" if "time" in g else ""))
    full = plan.get("full_set")
    if full and "questions" in full:
        lines.append(f"  full set        {figure(full['questions'])}; if it wins:")
        for name, g in full["per_winner"].items():
            lines.append(f"    {name}: prompts {figure(g['prompt_tokens'])}; answers {figure(g['generated_tokens'])}"
                         + (f"; {figure(g['money'])}" if g["money"] else "")
                         + (f"; {figure(g['time'])}" if "time" in g else ""))
    elif full:
        lines.append(f"  full set        {full['note']}")
    return "\n".join(lines)
