(function(){
var data=JSON.parse(document.getElementById('concept-map-data').textContent);
var map=document.getElementById('concept-map'),sel=document.getElementById('concept-map-model');
if(!map||!sel){return;}
function hex(n){var s=Math.floor(n).toString(16);return s.length<2?'0'+s:s;}
function colour(d){if(d===null||d===undefined){return '#a0aec0';}
  var v=Math.max(-1,Math.min(1,2*d-1)),r,g,b;
  if(v>=0){r=255;g=255-175*v;b=255-195*v;}else{r=255+215*v;g=255+140*v;b=255;}
  return '#'+hex(r)+hex(g)+hex(b);}
function paint(){var m=sel.value,ds=data.delta[m]||[];
  map.querySelectorAll('circle[data-i]').forEach(function(c){var i=+c.getAttribute('data-i');
    var d=ds[i],n=data.names[i];c.setAttribute('fill',colour(d));
    c.querySelector('title').textContent='concept '+data.concepts[i]+(n?' ('+n+')':'')+
      ': \u03b4('+m+') = '+(d===null||d===undefined?'\u2013':(+d).toPrecision(3));});}
sel.addEventListener('change',paint);})();
