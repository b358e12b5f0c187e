// MathJax 3 configuration for the course site (vendored MathJax: site/vendor/mathjax). Loaded before tex-chtml.js.
// Notebook pages keep TeX as $...$ / $$...$$; Markdown pages (pymdownx.arithmatex) use \(...\) and \[...\].
window.MathJax = {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "ams",
  },
  options: {
    enableMenu: false, // the menu's speech option would fetch a component from the network
    skipHtmlTags: ["script", "noscript", "style", "textarea", "pre", "code"],
  },
  chtml: { displayAlign: "center" },
};
