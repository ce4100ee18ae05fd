"""Chart layout: a figure's title gets its own row under Plotly's hover modebar, and the plot keeps its size."""
import plotly.graph_objects as go

from app import charts


def test_title_sits_below_the_modebar_row_and_the_plot_keeps_its_height():
    fig = go.Figure(go.Bar(x=[1], y=[1]))
    fig.update_layout(title="a long title that would run under the modebar buttons in a half-width column",
                      height=400, margin=dict(t=50, b=60))
    plot_before = 400 - 50 - 60
    charts.title_below_modebar(fig)
    layout = fig.layout
    title_top_px = (1 - layout.title.y) * layout.height             # container y measured from the bottom
    assert layout.title.yref == "container" and layout.title.yanchor == "top"
    assert abs(title_top_px - charts.MODEBAR_PX) < 1e-6               # starts where the modebar row ends
    assert layout.height - layout.margin.t - layout.margin.b == plot_before
    assert layout.margin.t - title_top_px >= 40                       # the old top margin is still above the plot
    untitled = charts.title_below_modebar(go.Figure().update_layout(height=300))
    assert untitled.layout.height == 300                              # no title: nothing moves
